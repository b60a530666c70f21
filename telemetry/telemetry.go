// Package telemetry sets up OpenTelemetry tracing from the standard OTEL_*
// environment variables and instruments HTTP without letting a secret into
// a span.
//
// Tracing is off unless OTEL_TRACES_EXPORTER names an exporter (otlp,
// console) or OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
// is set; OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none turn it off.
// The exporter (autoexport), the protocol, the sampler and the batching
// follow the other OTEL_* variables as the OpenTelemetry specification
// defines them.
//
// What a span may hold is decided here: outbound requests record scheme,
// host and port only (a provider's URL is a stored secret: its path or query
// may carry a key), inbound requests record their path with the browser's
// flow handle replaced, and no header value is recorded (otelhttp records
// none but the User-Agent).
package telemetry

import (
	"context"
	"net/http"
	"net/url"
	"strings"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ServiceName is the default service.name resource attribute
// (OTEL_SERVICE_NAME overrides it).
const ServiceName = "mcpauthd"

// Enabled reports whether the environment asks for traces to be exported.
func Enabled(getenv func(string) string) bool {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false
	}
	if e := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); e != "" {
		return e != "none"
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// NewTracerProvider returns the process's tracer provider and its shutdown
// (which flushes pending spans): a no-op provider when Enabled is false,
// else an SDK provider exporting with the exporter the OTEL_* variables of
// the process environment select. version becomes service.version.
func NewTracerProvider(ctx context.Context, getenv func(string) string, version string) (trace.TracerProvider, func(context.Context) error, error) {
	if !Enabled(getenv) {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	exp, err := autoexport.NewSpanExporter(ctx)
	if err != nil {
		return nil, nil, err
	}
	// Later options win: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
	// override the defaults.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", ServiceName), attribute.String("service.version", version)),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
	if err != nil {
		_ = exp.Shutdown(ctx)
		return nil, nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return tp, tp.Shutdown, nil
}

// Propagator is the context propagation of inbound calls: W3C Trace
// Context only (no baggage, which a caller could fill with anything).
func Propagator() propagation.TextMapPropagator { return propagation.TraceContext{} }

// noPropagation injects nothing: trace ids are not sent to authorization
// and MCP servers, which are third parties.
var noPropagation = propagation.NewCompositeTextMapPropagator()

type (
	origURLKey     struct{}
	origRequestKey struct{}
)

// Transport wraps base (the egress guard's pooled transport) with client
// spans that name the request's scheme, host and port, never its path,
// query or user info. Trace context is not sent out.
func Transport(base http.RoundTripper, tp trace.TracerProvider) http.RoundTripper {
	traced := otelhttp.NewTransport(restoreURL{base},
		otelhttp.WithTracerProvider(tp),
		otelhttp.WithPropagators(noPropagation),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return "HTTP " + r.Method + " " + r.URL.Host }),
	)
	return hideURL{traced}
}

// hideURL hands otelhttp a copy of the request whose URL is only
// scheme://host[:port], keeping the real URL in the context for restoreURL.
type hideURL struct{ next http.RoundTripper }

func (h hideURL) RoundTrip(r *http.Request) (*http.Response, error) {
	shown := &url.URL{Scheme: r.URL.Scheme, Host: r.URL.Host}
	hidden := r.WithContext(context.WithValue(r.Context(), origURLKey{}, r.URL))
	hidden.URL = shown
	resp, err := h.next.RoundTrip(hidden)
	if resp != nil && resp.Request != nil && resp.Request.URL == shown {
		resp.Request = r
	}
	return resp, err
}

// restoreURL puts the real URL back before the request leaves.
type restoreURL struct{ base http.RoundTripper }

func (rt restoreURL) RoundTrip(r *http.Request) (*http.Response, error) {
	orig, ok := r.Context().Value(origURLKey{}).(*url.URL)
	if !ok {
		return rt.base.RoundTrip(r)
	}
	out := *r
	out.URL = orig
	out.Host = ""
	return rt.base.RoundTrip(&out)
}

// Handler wraps the HTTP port with server spans. redact maps a request path
// to what a span may show (for example, a capability in the path replaced
// by a placeholder); the handler itself sees the request unchanged.
func Handler(next http.Handler, tp trace.TracerProvider, redact func(path string) string) http.Handler {
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if orig, ok := r.Context().Value(origRequestKey{}).(*http.Request); ok {
			r = r.Clone(r.Context())
			r.URL, r.RequestURI = orig.URL, orig.RequestURI
		}
		next.ServeHTTP(w, r)
	})
	traced := otelhttp.NewHandler(inner, "http",
		otelhttp.WithTracerProvider(tp),
		otelhttp.WithPropagators(Propagator()),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + r.URL.Path }),
	)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		shown := &url.URL{Path: redact(r.URL.Path)}
		hidden := r.WithContext(context.WithValue(r.Context(), origRequestKey{}, r))
		hidden.URL = shown
		hidden.RequestURI = ""
		traced.ServeHTTP(w, hidden)
	})
}
