package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// OpenAPIPath is where the HTTP port serves the REST API's OpenAPI document.
const OpenAPIPath = "/openapi.json"

// MaxHeaderBytes caps request headers on the HTTP port.
const MaxHeaderBytes = 16 << 10

// maxGatewayBody caps REST request bodies (the gRPC limit applies too).
const maxGatewayBody = MaxMessageBytes

// forwardedHeaders are the only browser/HTTP headers the gateway passes on
// as gRPC metadata. grpc-gateway's default matcher also forwards every
// Grpc-Metadata-* header, which would let any HTTP client inject metadata.
var forwardedHeaders = map[string]string{
	"Authorization": "authorization",
	"X-Request-Id":  "x-request-id",
}

func headerMatcher(key string) (string, bool) {
	v, ok := forwardedHeaders[textproto.CanonicalMIMEHeaderKey(key)]
	return v, ok
}

// NewGateway returns the REST gateway: every RPC under /v1/..., translated
// to a gRPC call on conn (the process's own gRPC server), so the gRPC
// interceptors authenticate and authorize REST calls exactly as gRPC ones.
//
// The runtime's method fallbacks are off: a POST with a form body (which a
// cross-site page can send without a preflight) is neither served as a GET
// nor turned into the method named by X-HTTP-Method-Override. An
// unsupported method on a known path answers 405 with Allow, a body over
// maxGatewayBody 413, and a body with more than one JSON value 400.
func NewGateway(ctx context.Context, conn *grpc.ClientConn) (http.Handler, error) {
	register := func(mux *runtime.ServeMux) error {
		for _, reg := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
			mcpauthv1.RegisterMCPProviderServiceHandler,
			mcpauthv1.RegisterOAuthServiceHandler,
			mcpauthv1.RegisterAuditServiceHandler,
			mcpauthv1.RegisterWebhookServiceHandler,
			mcpauthv1.RegisterMCPToolServiceHandler,
			mcpauthv1.RegisterTokenReadServiceHandler,
			mcpauthv1.RegisterConnectionServiceHandler,
		} {
			if err := reg(ctx, mux, conn); err != nil {
				return err
			}
		}
		return nil
	}
	probe, err := newProbeMux(register)
	if err != nil {
		return nil, err
	}
	marshaler := strictJSON{&runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: false, UseProtoNames: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}}
	routingError := routingErrorHandler(probe)
	var mux *runtime.ServeMux
	mux = runtime.NewServeMux(
		runtime.WithIncomingHeaderMatcher(headerMatcher),
		runtime.WithOutgoingHeaderMatcher(func(k string) (string, bool) {
			if k == "x-request-id" {
				return "X-Request-Id", true
			}
			return "", false
		}),
		runtime.WithMarshalerOption(runtime.MIMEWildcard, marshaler),
		runtime.WithDisablePathLengthFallback(),
		runtime.WithDisableHTTPMethodOverride(),
		runtime.WithErrorHandler(gatewayErrorHandler),
		runtime.WithRoutingErrorHandler(routingError),
		runtime.WithMiddlewares(
			exactVerb(func(w http.ResponseWriter, r *http.Request) {
				routingError(r.Context(), mux, marshaler, w, r, http.StatusMethodNotAllowed)
			}),
			capBody(func(w http.ResponseWriter, r *http.Request, err error) {
				runtime.HTTPError(r.Context(), mux, marshaler, w, r, err)
			}),
		),
	)
	if err := register(mux); err != nil {
		return nil, err
	}
	return mux, nil
}

// HTTPDeps are what NewHTTPHandler needs.
type HTTPDeps struct {
	Log     *slog.Logger
	Gateway http.Handler
	Browser *Browser
	Metrics http.Handler
	Ready   func(ctx context.Context) error
	// Version is reported by /healthz.
	Version string
	// OpenAPI is the REST API's OpenAPI document, served at /openapi.json.
	OpenAPI     []byte
	CORSOrigins []string
	TLS         bool
}

// NewHTTPHandler assembles the HTTP port: the browser routes of the OAuth
// flow, the REST gateway, health and metrics, behind the hardening headers
// and CORS policy.
func NewHTTPHandler(d HTTPDeps) http.Handler {
	mux := http.NewServeMux()
	if d.Browser != nil {
		d.Browser.Register(mux)
	}
	healthz, _ := json.Marshal(map[string]string{"status": "ok", "version": d.Version})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(append(healthz, '\n'))
	})
	if d.OpenAPI != nil {
		// The document describes the API, not any tenant's data: no key.
		mux.HandleFunc("GET "+OpenAPIPath, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(d.OpenAPI)
		})
	}
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if d.Ready != nil {
			if err := d.Ready(ctx); err != nil {
				http.Error(w, "not ready", http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if d.Metrics != nil {
		mux.Handle("GET /metrics", d.Metrics)
	}
	mux.Handle("/v1/", cors(d.CORSOrigins, d.Gateway))
	return baseHeaders(d.TLS, mux)
}

// baseHeaders sets the headers every response carries.
func baseHeaders(tls bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		if tls {
			h.Set("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
		}
		next.ServeHTTP(w, r)
	})
}

// cors allows cross-origin calls only from the configured origins; with no
// origins configured, no CORS header is ever sent (closed by default).
func cors(origins []string, next http.Handler) http.Handler {
	// The configuration accepts "scheme://host[:port]" with a trailing slash
	// and in any case; browsers send the origin lower-case without one.
	allow := make([]string, 0, len(origins))
	for _, o := range origins {
		allow = append(allow, strings.ToLower(strings.TrimRight(strings.TrimSpace(o), "/")))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		allowed := origin != "" && slices.Contains(allow, strings.ToLower(strings.TrimRight(origin, "/")))
		if allowed {
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", origin)
			h.Add("Vary", "Origin")
			h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Request-Id")
			h.Set("Access-Control-Allow-Methods", "GET, POST, PATCH, DELETE")
			h.Set("Access-Control-Max-Age", "600")
		}
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			if !allowed {
				http.Error(w, "origin not allowed", http.StatusForbidden)
				return
			}
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// NewHTTPServer wraps h with timeouts and header limits.
func NewHTTPServer(addr string, h http.Handler, tlsConfig *tls.Config, log *slog.Logger) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      90 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    MaxHeaderBytes,
		TLSConfig:         tlsConfig,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// TracedPath is the request path a span may show: the authorize route's
// flow handle (a capability until a browser binds it) becomes "{flow}",
// the restart route's binding "{binding}".
// Queries are never shown (the callback's carries the code and state).
func TracedPath(path string) string {
	if len(path) > len(AuthorizePath) && strings.HasPrefix(path, AuthorizePath) {
		return AuthorizePath + "{flow}"
	}
	if len(path) > len(RestartPath) && strings.HasPrefix(path, RestartPath) {
		return RestartPath + "{binding}"
	}
	return path
}
