package testauthz

import (
	"html/template"
	"net/http"
	"slices"

	"github.com/ory/fosite"
)

// TB is the part of testing.TB the servers use. Tests pass their *testing.T;
// the demo command (e2e/cmd/mcpauth-demo) passes its own, so the same
// servers run outside a test.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
}

func listenAddr(addr string) string {
	if addr == "" {
		return "127.0.0.1:0"
	}
	return addr
}

// consentPage asks the user to approve or deny, then POSTs the original
// authorization request's parameters back to the authorization endpoint
// (RFC 6749 section 4.1.1 leaves how the server authenticates the user and
// obtains the decision to the server; section 3.1 allows POST to the
// authorization endpoint in addition to GET).
var consentPage = template.Must(template.New("consent").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Authorize {{.Client}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}button{font-size:1rem;padding:.5rem 1.2rem;margin-right:.5rem}</style>
</head><body>
<h1>Authorize access</h1>
<p><b>{{.Client}}</b> asks to act as <b>{{.User}}</b> on <b>{{.Resource}}</b> with the scopes:</p>
<ul>{{range .Scopes}}<li><code>{{.}}</code></li>{{end}}</ul>
<form method="post">
{{range .Fields}}<input type="hidden" name="{{.Name}}" value="{{.Value}}">
{{end}}<button name="consent" value="approve" type="submit">Approve</button>
<button name="consent" value="deny" type="submit">Deny</button>
</form>
</body></html>
`))

type hiddenField struct{ Name, Value string }

// writeConsentPage renders the consent form for a request fosite has
// already validated (client, redirect URI, PKCE), so the page only ever
// posts back a request that can succeed. The CSP sets no form-action: some
// browsers apply it to the redirect that follows the POST, which leaves
// for the client's redirect URI.
func writeConsentPage(w http.ResponseWriter, ar fosite.AuthorizeRequester, user string) {
	form := ar.GetRequestForm()
	var fields []hiddenField
	names := make([]string, 0, len(form))
	for name := range form {
		if name != "consent" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		for _, v := range form[name] {
			fields = append(fields, hiddenField{name, v})
		}
	}
	client := ar.GetClient().GetID()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	w.Header().Set("X-Frame-Options", "DENY")
	_ = consentPage.Execute(w, map[string]any{
		"Client": client, "User": user, "Resource": form.Get("resource"),
		"Scopes": []string(ar.GetRequestedScopes()), "Fields": fields,
	})
}
