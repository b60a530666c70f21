package testauthz

import (
	"html"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

// TestConsentPage drives the consent page as a browser would: the GET shows
// a form carrying the request, posting it with consent=approve redirects to
// the client with a code that redeems, and consent=deny redirects with
// access_denied (RFC 6749 section 4.1.2.1).
func TestConsentPage(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{Consent: true, User: "demo-user"})
	a.RegisterClient("c1", "", []string{testRedirect}, true)
	verifier, challenge := NewPKCE()
	q := authorizeQuery("c1", challenge, "state-123")
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	resp, err := noFollow.Get(a.URL + "/authorize?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET authorize: %d %q, want the consent page", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	page := string(body)
	for _, want := range []string{`<form method="post">`, `name="consent" value="approve"`, "demo-user", "mcp.read"} {
		if !strings.Contains(page, want) {
			t.Errorf("consent page lacks %q", want)
		}
	}
	// The hidden fields carry back exactly the request's parameters.
	got := url.Values{}
	for _, m := range regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`).FindAllStringSubmatch(page, -1) {
		got.Add(html.UnescapeString(m[1]), html.UnescapeString(m[2]))
	}
	if got.Encode() != q.Encode() {
		t.Fatalf("form fields %v, want %v", got, q)
	}

	post := func(consent string) url.Values {
		t.Helper()
		form := url.Values{}
		for k, v := range got {
			form[k] = v
		}
		form.Set("consent", consent)
		resp, err := noFollow.PostForm(a.URL+"/authorize", form)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, err := url.Parse(resp.Header.Get("Location"))
		if resp.StatusCode/100 != 3 || err != nil || !strings.HasPrefix(loc.String(), testRedirect) {
			t.Fatalf("POST consent=%s: %d to %q, want a redirect to the client", consent, resp.StatusCode, resp.Header.Get("Location"))
		}
		return loc.Query()
	}
	if denied := post("deny"); denied.Get("error") != "access_denied" || denied.Get("state") != "state-123" {
		t.Fatalf("deny: %v", denied)
	}
	approved := post("approve")
	if approved.Get("code") == "" || approved.Get("state") != "state-123" {
		t.Fatalf("approve: %v", approved)
	}
	tok, err := a.TokenRequest(url.Values{"grant_type": {"authorization_code"}, "code": {approved.Get("code")},
		"redirect_uri": {testRedirect}, "code_verifier": {verifier}}, "c1", "")
	if err != nil || tok.AccessToken == "" {
		t.Fatalf("redeem: %v", err)
	}
	if _, ok := a.Validate(tok.AccessToken); !ok {
		t.Fatal("access token from the consented code does not validate")
	}
}
