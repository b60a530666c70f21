package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace/noop"
)

func TestEnabled(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env  map[string]string
		want bool
	}{
		{nil, false},
		{map[string]string{"OTEL_SERVICE_NAME": "x"}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, true},
		{map[string]string{"OTEL_TRACES_EXPORTER": "console"}, true},
		{map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, false},
		{map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, false},
	} {
		if got := Enabled(func(k string) string { return tc.env[k] }); got != tc.want {
			t.Errorf("Enabled(%v) = %v, want %v", tc.env, got, tc.want)
		}
	}
}

func TestOffByDefault(t *testing.T) {
	t.Parallel()
	tp, shutdown, err := NewTracerProvider(context.Background(), func(string) string { return "" }, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tp.(noop.TracerProvider); !ok {
		t.Fatalf("tracer provider %T, want the no-op one", tp)
	}
	if err := shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestTransportAndHandlerHideURLs: the server sees the real path and query
// and the client sends them, while the spans show neither the query nor
// (outbound) the path, nor the redacted part of an inbound path.
func TestTransportAndHandlerHideURLs(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	var seen string
	h := Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.URL.Path + "?" + r.URL.RawQuery + " " + r.RequestURI
		_, _ = io.WriteString(w, "ok")
	}), tp, func(p string) string { return strings.Replace(p, "cap-123", "{cap}", 1) })
	srv := httptest.NewServer(h)
	defer srv.Close()
	client := &http.Client{Transport: Transport(http.DefaultTransport, tp)}
	resp, err := client.Get(srv.URL + "/a/cap-123?code=code-456")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok" || seen != "/a/cap-123?code=code-456 /a/cap-123?code=code-456" {
		t.Fatalf("server saw %q, answered %q", seen, body)
	}
	if resp.Request.URL.Path != "/a/cap-123" {
		t.Errorf("response names request URL %v", resp.Request.URL)
	}
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want a client and a server span", len(spans))
	}
	for _, s := range spans {
		for _, a := range s.Attributes() {
			if v := a.Value.Emit(); strings.Contains(v, "cap-123") || strings.Contains(v, "code-456") {
				t.Errorf("span %q attribute %s = %q", s.Name(), a.Key, v)
			}
		}
		if strings.Contains(s.Name(), "cap-123") {
			t.Errorf("span name %q", s.Name())
		}
	}
}
