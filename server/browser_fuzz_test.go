package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/service/authflow"
)

// fuzzSecret is the browser secret the fuzzed callback's own cookie
// carries; it must never be echoed.
const fuzzSecret = "bs_Zk3qT9vX2mW7pL4nR8cY1hJ6"

// fuzzFlow is a BrowserFlow whose callback outcome follows the response:
// it hands the authorization server's error back raw (the page must escape
// it), and a state starting with "r" asks for a return URL.
type fuzzFlow struct {
	calls  int
	in     authflow.CallbackInput
	secret string
}

func (f *fuzzFlow) BeginBrowser(context.Context, string) (*authflow.BrowserStart, error) {
	return nil, errors.New("not used")
}

func (f *fuzzFlow) Restart(context.Context, string, string) (*authflow.BrowserStart, error) {
	return nil, errors.New("not used")
}

func (f *fuzzFlow) ClientMetadataDocument() map[string]any { return nil }

func (f *fuzzFlow) ProviderClientMetadataDocument(context.Context, string, string) (map[string]any, error) {
	return nil, errors.New("none")
}

func (f *fuzzFlow) Callback(_ context.Context, in authflow.CallbackInput) *authflow.CallbackResult {
	f.calls++
	f.in = in
	f.secret = in.BrowserSecret(authflow.Binding(in.State))
	res := &authflow.CallbackResult{Tenant: "acme", Provider: "github"}
	if strings.HasPrefix(in.State, "r") {
		res.ReturnURL = "https://app.example/done?keep=1"
	}
	switch {
	case in.State == "":
		return &authflow.CallbackResult{Reason: domain.ReasonMissingState}
	case in.State == "down":
		res.Reason = domain.ReasonUnavailable
	case in.State == "weird":
		res.Reason = "SOMETHING_NEW"
	case f.secret != fuzzSecret:
		res.Reason = domain.ReasonBrowserMismatch
	case in.Error != "":
		res.Reason, res.Detail = domain.ReasonAuthorizationDenied, in.Error+": "+in.ErrorDescription
	case in.Code == "":
		res.Reason = domain.ReasonMissingCode
	default:
		res.OK = true
	}
	return res
}

// pageTags are the elements the result page and http.Redirect's body are
// made of; any other "<" in a body came from the request unescaped.
var pageTags = []string{"!doctype", "html", "/html", "head", "/head", "meta", "title", "/title", "style", "/style",
	"body", "/body", "h1", "/h1", "p", "/p", "code", "/code", "a", "/a"}

func foreignTag(body string) string {
	for i := strings.IndexByte(body, '<'); i >= 0; {
		rest := body[i+1:]
		ok := false
		for _, tag := range pageTags {
			if after, found := strings.CutPrefix(rest, tag); found && (strings.HasPrefix(after, " ") || strings.HasPrefix(after, ">")) {
				ok = true
				break
			}
		}
		if !ok {
			return rest[:min(len(rest), 20)]
		}
		j := strings.IndexByte(rest, '<')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return ""
}

// FuzzCallbackQuery drives the real callback route (through the mux, with
// the browser guard) with an arbitrary raw query and Cookie header. It must
// never panic; answer 200, 302, 400 or 503 with Cache-Control no-store and
// the page CSP; refuse a repeated parameter without calling the flow or
// touching a cookie; otherwise pass exactly the query's values to the flow
// once and clear the flow's cookie unless the store was unreachable; never
// put request text into the page unescaped (no "<script", no element the
// page does not have); never echo the browser secret; and redirect only to
// the flow's return URL with the outcome added.
func FuzzCallbackQuery(f *testing.F) {
	for _, s := range []struct {
		query, cookie string
		dify          bool
	}{
		{"state=r1&code=c0de&iss=https%3A%2F%2Fas.example", "", false},
		{"state=s1&code=c0de&iss=https%3A%2F%2Fas.example", "", true},
		{"error=access_denied&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E&state=s1", "", false},
		{"error=%3Cimg+src%3Dx+onerror%3Dalert(1)%3E&state=s1", "", false},
		{"state=a&state=b&code=c", "", false},
		{"state=s1&code=1&code=2", "", false},
		{"state=s1&iss=a&iss=b", "", false},
		{"error_uri=a&error_uri=b&state=s1", "", false},
		{"state=s1&iss=&code=c", "", false},
		{"state=down&code=c", "", false},
		{"state=weird", "", false},
		{"state=r2&error=x", "", false},
		{"", "", false},
		{"%zz&state=%&code=%%", "", false},
		{"state=x;code=y", "", false},
		{"state=" + strings.Repeat("x", 600) + "&code=c", "", false},
		{"state=s1&code=c&error=%00%0d%0aSet-Cookie:+a%3Db", "", false},
		{"error=x&error_description=%E2%80%AE%FF&state=s1", "", false},
		{"state=s1&code=c", "__Host-mcpauth_AAAAAAAA=forged; other=1", false},
		{"state=s1&code=c", "\x00\r\n;;=", false},
		{"state=s1&error=" + fuzzSecret, "", false},
	} {
		f.Add(s.query, s.cookie, s.dify)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, rawQuery, cookie string, dify bool) {
		flow := &fuzzFlow{}
		mux := http.NewServeMux()
		NewBrowser(BrowserDeps{Log: log, Flow: flow, Secure: true}).Register(mux)
		path := CallbackPath
		if dify {
			path = DifyCallbackPath
		}
		req := httptest.NewRequest(http.MethodGet, "https://mcpauth.example"+path, nil)
		req.URL.RawQuery = rawQuery
		q := req.URL.Query()
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		state := q.Get("state")
		if state != "" {
			req.AddCookie(&http.Cookie{Name: cookieName(true, authflow.Binding(state)), Value: fuzzSecret})
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		res := rec.Result()
		body := rec.Body.String()

		switch res.StatusCode {
		case http.StatusOK, http.StatusFound, http.StatusBadRequest, http.StatusServiceUnavailable:
		default:
			t.Fatalf("status %d for %q: %s", res.StatusCode, rawQuery, body)
		}
		if h := res.Header; h.Get("Cache-Control") != "no-store" || h.Get("Pragma") != "no-cache" || h.Get("Content-Security-Policy") != pageCSP {
			t.Fatalf("caching or CSP headers missing: %v", h)
		}
		if tag := foreignTag(body); tag != "" || strings.Contains(strings.ToLower(body), "<script") {
			t.Fatalf("request text reflected unescaped (%q) in %s", tag, body)
		}
		echoed := strings.Contains(rawQuery, fuzzSecret)
		for k, vs := range q {
			echoed = echoed || strings.Contains(k, fuzzSecret) || strings.Contains(strings.Join(vs, ""), fuzzSecret)
		}
		if !echoed && (strings.Contains(body, fuzzSecret) || strings.Contains(res.Header.Get("Location"), fuzzSecret)) {
			t.Fatalf("browser secret echoed: %v %s", res.Header, body)
		}

		if repeatedParam(q, callbackParams) {
			if flow.calls != 0 || res.StatusCode != http.StatusBadRequest || !strings.Contains(body, domain.ReasonDuplicateParameter) ||
				len(res.Cookies()) != 0 {
				t.Fatalf("repeated parameter in %q: flow calls %d, status %d, cookies %v", rawQuery, flow.calls, res.StatusCode, res.Cookies())
			}
			return
		}
		_, issPresent := q["iss"]
		if flow.calls != 1 || flow.in.State != state || flow.in.Code != q.Get("code") || flow.in.Iss != q.Get("iss") ||
			flow.in.IssPresent != issPresent || flow.in.Error != q.Get("error") || flow.in.ErrorDescription != q.Get("error_description") {
			t.Fatalf("flow got %+v (%d calls) for %q", flow.in, flow.calls, rawQuery)
		}
		cookies := res.Cookies()
		if state != "" && len(state) <= 512 && state != "down" {
			if len(cookies) != 1 {
				t.Fatalf("want the flow cookie cleared, got %v", cookies)
			}
			c := cookies[0]
			if c.Name != cookieName(true, authflow.Binding(state)) || c.Value != "" || c.MaxAge >= 0 || !c.HttpOnly || !c.Secure ||
				c.SameSite != http.SameSiteLaxMode || c.Path != "/" {
				t.Fatalf("flow cookie not cleared properly: %+v", c)
			}
		} else if len(cookies) != 0 {
			t.Fatalf("cookies set for state %.40q: %v", state, cookies)
		}

		if res.StatusCode == http.StatusFound {
			if !strings.HasPrefix(state, "r") {
				t.Fatalf("redirect without a return URL: %v", res.Header)
			}
			u, err := url.Parse(res.Header.Get("Location"))
			if err != nil || u.Scheme != "https" || u.Host != "app.example" || u.Path != "/done" {
				t.Fatalf("redirect to %q (%v)", res.Header.Get("Location"), err)
			}
			rq := u.Query()
			want := "error"
			if flow.secret == fuzzSecret && q.Get("error") == "" && q.Get("code") != "" && state != "down" && state != "weird" {
				want = "success"
			}
			if rq.Get("keep") != "1" || rq.Get("mcpauth_status") != want || rq.Get("mcpauth_provider") != "tenants/acme/providers/github" {
				t.Fatalf("redirect query %v, want status %s", rq, want)
			}
			return
		}
		if ct := res.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
			t.Fatalf("content type %q", ct)
		}
		if strings.HasPrefix(state, "r") && state != "" {
			t.Fatalf("no redirect to the return URL: %d %s", res.StatusCode, body)
		}
		if (res.StatusCode == http.StatusServiceUnavailable) != (state == "down") {
			t.Fatalf("status %d for state %.40q", res.StatusCode, state)
		}
	})
}
