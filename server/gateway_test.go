package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// restRoute is one RPC's HTTP binding, with its path variables filled in.
type restRoute struct {
	Method, Path, RPC string
	Body              bool
	// Template is the path as the google.api.http option writes it.
	Template string
}

var (
	boundVar = regexp.MustCompile(`\{[^}=]+=([^}]*)\}`)
	plainVar = regexp.MustCompile(`\{[^}]+\}`)
)

// restRoutes reads every REST route from the API's google.api.http
// options, so a new RPC is covered without touching the tests.
func restRoutes(tb testing.TB) []restRoute {
	tb.Helper()
	var out []restRoute
	for _, am := range apiMethods() {
		if am.Desc.IsStreamingServer() {
			continue // WatchEvents is served on gRPC only
		}
		rule, _ := proto.GetExtension(am.Desc.Options(), annotations.E_Http).(*annotations.HttpRule)
		r := restRoute{RPC: am.Full, Body: rule.GetBody() != ""}
		var tmpl string
		switch p := rule.GetPattern().(type) {
		case *annotations.HttpRule_Get:
			r.Method, tmpl = http.MethodGet, p.Get
		case *annotations.HttpRule_Post:
			r.Method, tmpl = http.MethodPost, p.Post
		case *annotations.HttpRule_Patch:
			r.Method, tmpl = http.MethodPatch, p.Patch
		case *annotations.HttpRule_Delete:
			r.Method, tmpl = http.MethodDelete, p.Delete
		case *annotations.HttpRule_Put:
			r.Method, tmpl = http.MethodPut, p.Put
		default:
			tb.Fatalf("%s has no HTTP binding this test knows", r.RPC)
		}
		r.Template = tmpl
		tmpl = boundVar.ReplaceAllStringFunc(tmpl, func(v string) string {
			return strings.ReplaceAll(boundVar.FindStringSubmatch(v)[1], "*", "x")
		})
		r.Path = plainVar.ReplaceAllString(tmpl, "x")
		out = append(out, r)
	}
	if len(out) < 14 {
		tb.Fatalf("found %d REST routes, want them all", len(out))
	}
	return out
}

// rpcRecorder is a gRPC client connection that records each call's method
// and answers NOT_FOUND without sending anything.
type rpcRecorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *rpcRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	return c
}

// newTestGateway returns the HTTP port's handler with the real gateway in
// front of a recorder.
func newTestGateway(tb testing.TB) (http.Handler, *rpcRecorder) {
	tb.Helper()
	rec := &rpcRecorder{}
	conn, err := grpc.NewClient("passthrough:///unused", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(_ context.Context, method string, _, _ any, _ *grpc.ClientConn, _ grpc.UnaryInvoker, _ ...grpc.CallOption) error {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			rec.calls = append(rec.calls, method)
			return status.Error(codes.NotFound, "recorded")
		}))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	gw, err := NewGateway(context.Background(), conn)
	if err != nil {
		tb.Fatal(err)
	}
	return NewHTTPHandler(HTTPDeps{Gateway: gw}), rec
}

func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// allowedAt maps each route path to the methods served there, in
// probedMethods order.
func allowedAt(routes []restRoute) map[string][]string {
	out := map[string][]string{}
	for _, m := range probedMethods {
		for _, r := range routes {
			if r.Method == m && !slices.Contains(out[r.Path], m) {
				out[r.Path] = append(out[r.Path], m)
			}
		}
	}
	return out
}

// TestGatewayWrongMethod: every REST route answers its own method (the
// call reaches its RPC) and every other method with 405, an Allow header
// listing exactly the path's methods, and no call at all.
func TestGatewayWrongMethod(t *testing.T) {
	t.Parallel()
	h, rec := newTestGateway(t)
	routes := restRoutes(t)
	for _, r := range routes {
		w := serve(h, httptest.NewRequest(r.Method, r.Path, strings.NewReader("{}")))
		if got := rec.take(); w.Code != http.StatusNotFound || !slices.Equal(got, []string{r.RPC}) {
			t.Errorf("%s %s: %d, calls %v; want the recorder's 404 from %s", r.Method, r.Path, w.Code, got, r.RPC)
		}
	}
	for path, allowed := range allowedAt(routes) {
		for _, m := range append(slices.Clone(probedMethods), http.MethodHead, http.MethodOptions, "TRACE", "PROPFIND") {
			if slices.Contains(allowed, m) {
				continue
			}
			w := serve(h, httptest.NewRequest(m, path, strings.NewReader("{}")))
			if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != strings.Join(allowed, ", ") {
				t.Errorf("%s %s: %d Allow %q; want 405 Allow %q", m, path, w.Code, w.Header().Get("Allow"), strings.Join(allowed, ", "))
			}
			if got := rec.take(); len(got) != 0 {
				t.Errorf("%s %s called %v", m, path, got)
			}
		}
	}
	// The runtime would let ".../x:verb" match a resource route's "*" (as
	// an id "x:verb"): a custom method's path is not the resource's path,
	// and an unknown custom method is no path at all.
	for _, path := range []string{"/v1/nothing/here", "/v1/tenants/x/providers/x:bogus"} {
		for _, m := range probedMethods {
			w := serve(h, httptest.NewRequest(m, path, strings.NewReader("{}")))
			if got := rec.take(); w.Code != http.StatusNotFound || w.Header().Get("Allow") != "" || len(got) != 0 {
				t.Errorf("%s %s: %d Allow %q, calls %v; want 404 without Allow and none", m, path, w.Code, w.Header().Get("Allow"), got)
			}
		}
	}
}

// TestGatewayIgnoresMethodOverride: a form POST (which any web page can
// send cross-site without a preflight) with X-HTTP-Method-Override, or
// without it (the runtime's POST-to-GET fallback), reaches at most the
// path's own POST RPC, never the RPC of another method.
func TestGatewayIgnoresMethodOverride(t *testing.T) {
	t.Parallel()
	h, rec := newTestGateway(t)
	routes := restRoutes(t)
	postRPC := map[string]string{}
	for _, r := range routes {
		if r.Method == http.MethodPost {
			postRPC[r.Path] = r.RPC
		}
	}
	for path, allowed := range allowedAt(routes) {
		for _, override := range append([]string{""}, probedMethods...) {
			req := httptest.NewRequest(http.MethodPost, path, strings.NewReader("name=tenants%2Facme%2Fproviders%2Fx"))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if override != "" {
				req.Header.Set("X-HTTP-Method-Override", override)
			}
			w := serve(h, req)
			got := rec.take()
			if rpc, ok := postRPC[path]; ok {
				if len(got) > 1 || len(got) == 1 && got[0] != rpc {
					t.Errorf("form POST %s with override %q called %v", path, override, got)
				}
				continue
			}
			if w.Code != http.StatusMethodNotAllowed || len(got) != 0 || w.Header().Get("Allow") != strings.Join(allowed, ", ") {
				t.Errorf("form POST %s with override %q: %d Allow %q, calls %v; want 405 and none", path, override, w.Code, w.Header().Get("Allow"), got)
			}
		}
	}
}

// hideLength makes a request body of unknown length (chunked).
type hideLength struct{ io.Reader }

// restReason is the ErrorInfo reason of an INVALID_ARGUMENT REST error
// body, or "" if it is not one.
func restReason(w *httptest.ResponseRecorder) string {
	var e struct {
		Code    int `json:"code"`
		Details []struct {
			Reason string `json:"reason"`
		} `json:"details"`
	}
	if json.Unmarshal(w.Body.Bytes(), &e) != nil || e.Code != int(codes.InvalidArgument) || len(e.Details) != 1 {
		return ""
	}
	return e.Details[0].Reason
}

// TestGatewayBodyLimits: on every route that takes a body, a body over the
// cap answers 413 whether its length was declared or not, and a body with
// anything but white space after its JSON value answers 400 without echoing
// it, both INVALID_ARGUMENT with its ErrorInfo reason; neither reaches the
// RPC.
func TestGatewayBodyLimits(t *testing.T) {
	t.Parallel()
	h, rec := newTestGateway(t)
	big := `{"display_name":"` + strings.Repeat("a", maxGatewayBody) + `"}`
	n := 0
	for _, r := range restRoutes(t) {
		if !r.Body {
			continue
		}
		n++
		for _, declared := range []bool{true, false} {
			req := httptest.NewRequest(r.Method, r.Path, strings.NewReader(big))
			if !declared {
				req.Body, req.ContentLength = io.NopCloser(hideLength{strings.NewReader(big)}), -1
			}
			w := serve(h, req)
			if got := rec.take(); w.Code != http.StatusRequestEntityTooLarge || restReason(w) != "INVALID_ARGUMENT" || len(got) != 0 {
				t.Errorf("%s %s oversized (length declared %v): %d, calls %v; want 413 and none", r.Method, r.Path, declared, w.Code, got)
			}
		}
		for _, body := range []string{`{} garbage`, `{}{}`, `{} {"x":1}`, `{}]`, `{} 1`, `{}"trailing-secret"`} {
			w := serve(h, httptest.NewRequest(r.Method, r.Path, strings.NewReader(body)))
			if got := rec.take(); w.Code != http.StatusBadRequest || restReason(w) != "INVALID_ARGUMENT" || len(got) != 0 {
				t.Errorf("%s %s %q: %d %s, calls %v; want 400 INVALID_ARGUMENT and none", r.Method, r.Path, body, w.Code, w.Body, got)
			}
			if strings.Contains(w.Body.String(), "garbage") || strings.Contains(w.Body.String(), "trailing-secret") {
				t.Errorf("%s %s: the error echoes the body: %s", r.Method, r.Path, w.Body)
			}
		}
		for _, body := range []string{"{}", "{} \r\n\t", ""} {
			serve(h, httptest.NewRequest(r.Method, r.Path, strings.NewReader(body)))
			if got := rec.take(); !slices.Equal(got, []string{r.RPC}) {
				t.Errorf("%s %s %q: calls %v, want %s", r.Method, r.Path, body, got, r.RPC)
			}
		}
	}
	if n < 8 {
		t.Fatalf("%d routes take a body, want them all", n)
	}
}
