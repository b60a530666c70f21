package e2e

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// otlpSink is an OTLP/HTTP trace receiver (OTLP specification, "OTLP/HTTP":
// POST /v1/traces with a binary protobuf ExportTraceServiceRequest, answered
// 200 with an ExportTraceServiceResponse) that keeps the span names per
// resource's service.name and service.version.
type otlpSink struct {
	mu    sync.Mutex
	spans map[string]string // span name → "service.name service.version"
}

func (s *otlpSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "not an OTLP/HTTP protobuf trace export", http.StatusBadRequest)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		z, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = z
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req collectortrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	for _, rs := range req.GetResourceSpans() {
		var svc, ver string
		for _, a := range rs.GetResource().GetAttributes() {
			switch a.GetKey() {
			case "service.name":
				svc = a.GetValue().GetStringValue()
			case "service.version":
				ver = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				s.spans[sp.GetName()] = svc + " " + ver
			}
		}
	}
	s.mu.Unlock()
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (s *otlpSink) get(name string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.spans[name]
	return v, ok
}

// TestTracesReachOTLPEndpoint configures tracing only through the standard
// OTEL_* variables and checks that a gRPC call's span arrives at an OTLP
// HTTP receiver, under service.name mcpauthd with the build's version. Not
// parallel: it sets process environment variables.
func TestTracesReachOTLPEndpoint(t *testing.T) {
	sink := &otlpSink{spans: map[string]string{}}
	srv := httptest.NewServer(sink)
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	s := Start(t, Options{})
	if _, err := s.Providers().ListProviders(Ctx(t, s.AdminKey), &mcpauthv1.ListProvidersRequest{Parent: "tenants/acme"}); err != nil {
		t.Fatal(err)
	}
	const want = "mcpauth.v1.MCPProviderService/ListProviders"
	deadline := time.Now().Add(15 * time.Second)
	for {
		if res, ok := sink.get(want); ok {
			if ver, ok := strings.CutPrefix(res, "mcpauthd "); !ok || ver == "" {
				t.Fatalf("span %q came with resource %q, want service mcpauthd and a version", want, res)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q span reached the OTLP endpoint", want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
