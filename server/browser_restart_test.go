package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/service/authflow"
)

// restartFlow is a BrowserFlow whose callback finds every flow lost (and
// restartable) and whose restart succeeds only for one cookie.
type restartFlow struct{ *fuzzFlow }

const restartCookie = "secret.sealed-hint"

func (restartFlow) Callback(_ context.Context, in authflow.CallbackInput) *authflow.CallbackResult {
	return &authflow.CallbackResult{Reason: domain.ReasonStateInvalid, Tenant: "acme", Provider: "wiki", Restart: authflow.Binding(in.State)}
}

func (restartFlow) Restart(_ context.Context, binding, cookie string) (*authflow.BrowserStart, error) {
	if cookie != restartCookie {
		return nil, apperr.FailedPrecondition(domain.ReasonFlowExpiredOrUsed, "gone")
	}
	return &authflow.BrowserStart{RedirectURL: "https://as.example/authorize?x=1", Binding: "NEWBIND1", BrowserSecret: "new.cookie", MaxAge: 10 * time.Minute}, nil
}

// TestBrowserRestart: a lost flow's page links to the restart route and
// keeps the flow cookie; the restart route hands the flow cookie of its
// binding (only a well-formed one) to the flow, swaps the cookies and
// redirects; without the cookie it shows a page and sets nothing.
func TestBrowserRestart(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	NewBrowser(BrowserDeps{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Flow: restartFlow{&fuzzFlow{}}, Secure: true}).Register(mux)
	do := func(path string, cookies ...*http.Cookie) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		for _, c := range cookies {
			req.AddCookie(c)
		}
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, req)
		return w
	}
	binding := authflow.Binding("st")
	flowCookie := &http.Cookie{Name: cookieName(true, binding), Value: restartCookie}

	w := do(CallbackPath+"?state=st&code=c", flowCookie)
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), `id="restart" href="`+RestartPath+binding+`"`) {
		t.Fatalf("lost flow page: %d %s", w.Code, w.Body)
	}
	if len(w.Result().Cookies()) != 0 {
		t.Fatalf("the lost flow page changed cookies: %v (the restart needs the flow cookie)", w.Result().Cookies())
	}

	w = do(RestartPath+binding, flowCookie)
	if w.Code != http.StatusFound || w.Header().Get("Location") != "https://as.example/authorize?x=1" {
		t.Fatalf("restart: %d %q", w.Code, w.Header().Get("Location"))
	}
	got := map[string]*http.Cookie{}
	for _, c := range w.Result().Cookies() {
		got[c.Name] = c
	}
	if old := got[cookieName(true, binding)]; old == nil || old.MaxAge >= 0 {
		t.Errorf("the old flow cookie was not cleared: %v", old)
	}
	if nc := got[cookieName(true, "NEWBIND1")]; nc == nil || nc.Value != "new.cookie" || nc.MaxAge != 600 || !nc.HttpOnly || !nc.Secure {
		t.Errorf("the new flow cookie: %v", nc)
	}

	for name, w := range map[string]*httptest.ResponseRecorder{
		"no cookie":         do(RestartPath + binding),
		"another cookie":    do(RestartPath+binding, &http.Cookie{Name: cookieName(true, binding), Value: "other"}),
		"malformed binding": do(RestartPath+"a.b", &http.Cookie{Name: cookieName(true, "a.b"), Value: restartCookie}),
	} {
		if w.Code != http.StatusBadRequest || len(w.Result().Cookies()) != 0 || !strings.Contains(w.Body.String(), "FLOW_EXPIRED_OR_USED") {
			t.Errorf("%s: %d, cookies %v, %s", name, w.Code, w.Result().Cookies(), w.Body)
		}
		if w.Header().Get("Cache-Control") != "no-store" || w.Header().Get("Content-Security-Policy") != pageCSP {
			t.Errorf("%s: the restart route is not hardened: %v", name, w.Header())
		}
	}
}
