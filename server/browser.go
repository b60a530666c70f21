package server

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/reqid"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/service/authflow"
)

// Browser routes and the names the flow needs to know.
const (
	// AuthorizePath, followed by a flow handle, is the route a person's
	// browser opens to start a flow.
	AuthorizePath = "/v1/oauth/authorize/"
	// CallbackPath is the OAuth redirect URI's path.
	CallbackPath = "/v1/oauth/callback"
	// RestartPath, followed by a flow's binding, starts a lost or expired
	// flow again for the browser holding its cookie.
	RestartPath = "/v1/oauth/restart/"
	// DifyCallbackPath is the Dify-compatible alias of CallbackPath.
	DifyCallbackPath = "/console/api/mcp/oauth/callback"
	// ClientMetadataPath is where mcpauth serves its own Client ID Metadata
	// Document when its public URL is https.
	ClientMetadataPath = "/v1/oauth/client-metadata.json"
	// ProviderClientMetadataPathPrefix is where a provider identified by
	// its own Client ID Metadata Document has it served:
	// ProviderClientMetadataPathPrefix + "{tenant}/{provider}".
	ProviderClientMetadataPathPrefix = "/v1/oauth/client-metadata/"
)

// ProviderClientMetadataURL returns the URL of a provider's own Client ID
// Metadata Document under publicURL; nil unless publicURL is https (the
// draft requires an https client identifier URL).
func ProviderClientMetadataURL(publicURL string) func(tenant, id string) string {
	if !strings.HasPrefix(publicURL, "https://") {
		return nil
	}
	return func(tenant, id string) string {
		return publicURL + ProviderClientMetadataPathPrefix + tenant + "/" + id
	}
}

// BrowserFlow is the browser side of the OAuth flow. *authflow.Service
// implements it.
type BrowserFlow interface {
	BeginBrowser(ctx context.Context, handle string) (*authflow.BrowserStart, error)
	Callback(ctx context.Context, in authflow.CallbackInput) *authflow.CallbackResult
	Restart(ctx context.Context, binding, cookie string) (*authflow.BrowserStart, error)
	ClientMetadataDocument() map[string]any
	ProviderClientMetadataDocument(ctx context.Context, tenant, id string) (map[string]any, error)
}

var _ BrowserFlow = (*authflow.Service)(nil)

// cookieName is the flow cookie's name for a binding (see
// authflow.BrowserStart): __Host- prefixed when the public URL is https.
func cookieName(secure bool, binding string) string {
	if secure {
		return "__Host-mcpauth_" + binding
	}
	return "mcpauth_" + binding
}

// lostFlowMessage is shown when mcpauth holds no flow for a link or
// callback: it expired, was already completed, or was lost (a Redis
// restart or eviction). Nothing was changed; the way out is to start again.
const lostFlowMessage = "mcpauth has no authorization in progress for this link: it expired, was already completed, or was lost " +
	"when mcpauth's state store restarted. Nothing was changed. Go back to the application and start the authorization again."

// restartMessage is shown instead when this browser may start the lost
// flow again from the page.
const restartMessage = "mcpauth has no authorization in progress for this link: it expired, or was lost when mcpauth's state store " +
	"restarted. Nothing was changed. You can start the authorization again from here."

// callbackMessages are the result page's words for each outcome.
var callbackMessages = map[string]string{
	"":                               "The MCP server is now connected. You can close this window.",
	domain.ReasonMissingState:        "The authorization response carries no valid state. Start the authorization again.",
	domain.ReasonUnavailable:         "mcpauth cannot reach its state store right now. Nothing was lost: reload this page in a moment to finish the authorization.",
	domain.ReasonStateInvalid:        lostFlowMessage,
	domain.ReasonBrowserMismatch:     "This authorization was started in another browser. Finish it in the browser that started it, or start it again here.",
	domain.ReasonIssuerMismatch:      "The authorization response came from an unexpected authorization server and was discarded.",
	domain.ReasonAuthorizationDenied: "The authorization server did not grant access.",
	domain.ReasonMissingCode:         "The authorization response carries no code.",
	domain.ReasonProviderGone:        "The provider was deleted while it was being authorized.",
	domain.ReasonProviderChanged:     "The provider changed while it was being authorized (its server, or its rules). Start again.",
	domain.ReasonClientChanged:       "The provider's client registration changed while it was being authorized. Start again.",
	domain.ReasonTokenExchangeFailed: "The authorization server refused to exchange the authorization code.",
	domain.ReasonStoreFailed:         "The tokens could not be stored. Start the authorization again.",
	domain.ReasonDuplicateParameter:  "The authorization response repeats a parameter and was discarded. Finish the authorization in the browser that started it.",
}

// BrowserDeps are what NewBrowser needs.
type BrowserDeps struct {
	Log  *slog.Logger
	Flow BrowserFlow
	// Secure selects __Host- cookies (the public URL is https).
	Secure bool
	// TLS adds HSTS (this process terminates TLS).
	TLS           bool
	RatePerMinute int
	// PublicRatePerMinute limits, per client IP, the unauthenticated
	// documents authorization servers fetch: the per-provider Client ID
	// Metadata Documents and JWKS (default 600).
	PublicRatePerMinute int
	// JWKS serves providers' public client keys; nil serves none.
	JWKS    JWKSSource
	Metrics *metrics.Metrics
	// TrustedProxies are the proxies whose X-Forwarded-For is believed when
	// rate limiting; empty means the connection's address is the client.
	TrustedProxies []netip.Prefix
}

// Browser serves the routes a person's browser visits: the authorize
// redirect, the OAuth callback (and its Dify-compatible alias), and the
// Client ID Metadata Documents and JWKS authorization servers fetch.
type Browser struct {
	d       BrowserDeps
	limiter *ipLimiter
	// public limits the public documents, apart from the browser routes:
	// authorization servers fetch them far more often than people sign in.
	public *ipLimiter
}

// NewBrowser returns the browser routes.
func NewBrowser(d BrowserDeps) *Browser {
	if d.RatePerMinute <= 0 {
		d.RatePerMinute = 60
	}
	if d.PublicRatePerMinute <= 0 {
		d.PublicRatePerMinute = 600
	}
	return &Browser{d: d, limiter: newIPLimiter(d.RatePerMinute), public: newIPLimiter(d.PublicRatePerMinute)}
}

// Register adds the routes to mux. Only GET (and HEAD) is served; other
// methods on the browser paths answer 405 here, rather than falling through
// to the REST gateway under /v1/.
func (b *Browser) Register(mux *http.ServeMux) {
	for path, h := range map[string]http.HandlerFunc{
		AuthorizePath + "{flow}":  b.authorize,
		RestartPath + "{binding}": b.restart,
		CallbackPath:              b.callback,
		DifyCallbackPath:          b.callback,
	} {
		mux.Handle("GET "+path, b.guard(h))
		mux.Handle(path, b.guard(http.HandlerFunc(methodNotAllowed)))
	}
	mux.HandleFunc("GET "+ClientMetadataPath, b.clientMetadata)
	mux.Handle("GET "+ProviderClientMetadataPathPrefix+"{tenant}/{provider}", b.publicGuard(http.HandlerFunc(b.providerClientMetadata)))
	if b.d.JWKS != nil {
		mux.Handle("GET "+JWKSPathPrefix+"{tenant}/{provider}", b.publicGuard(jwksHandler(b.d.JWKS)))
	}
}

// publicGuard applies the per-IP rate limit of the public documents (the
// per-provider Client ID Metadata Documents and JWKS), which anyone may
// fetch and each of which costs a database read. Past it, the answer is a
// bare 429 with Retry-After.
func (b *Browser) publicGuard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !b.public.allow(clientKey(r, b.d.TrustedProxies)) {
			w.Header().Set("Retry-After", "60")
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func methodNotAllowed(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
}

// pageStyle is the result page's only style; the CSP allows exactly it by
// hash, and nothing else (no script, no image, no frame, no form).
const pageStyle = `body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#1d1d1f}` +
	`h1{font-size:1.4rem}.ok{color:#116329}.err{color:#a40e26}code{background:#f3f3f3;padding:.1rem .3rem;border-radius:3px;word-break:break-all}`

var pageCSP = func() string {
	h := sha256.Sum256([]byte(pageStyle))
	return "default-src 'none'; style-src 'sha256-" + base64.StdEncoding.EncodeToString(h[:]) + "'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}()

var pageTemplate = template.Must(template.New("result").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer"><title>{{.Title}}</title><style>` + pageStyle + `</style></head>
<body><h1 class="{{if .OK}}ok{{else}}err{{end}}" id="title">{{.Title}}</h1>
<p id="message">{{.Message}}</p>
{{if .Detail}}<p>The authorization server said: <code id="detail">{{.Detail}}</code></p>{{end}}
{{if .Reason}}<p>Reason code: <code id="reason">{{.Reason}}</code></p>{{end}}
{{if .Provider}}<p>Provider: <code id="provider">{{.Provider}}</code></p>{{end}}
{{if .Restart}}<p><a id="restart" href="{{.Restart}}">Start the authorization again</a></p>{{end}}
</body></html>
`))

type pageData struct {
	OK                                       bool
	Title, Message, Detail, Reason, Provider string
	// Restart is the link that starts a lost flow again.
	Restart string
}

// guard applies the browser routes' hardening: strict caching, referrer and
// framing policy, a tight CSP, and a per-IP rate limit.
func (b *Browser) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// nosniff, frame denial, no-referrer and HSTS come from the base
		// headers every response carries (baseHeaders).
		h.Set("Cache-Control", "no-store")
		h.Set("Pragma", "no-cache")
		h.Set("Content-Security-Policy", pageCSP)
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		if !b.limiter.allow(clientKey(r, b.d.TrustedProxies)) {
			w.Header().Set("Retry-After", "60")
			b.page(w, http.StatusTooManyRequests, pageData{Title: "Too many requests", Message: "Slow down and try again in a minute.", Reason: "RATE_LIMITED"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// clientKey is the rate-limit key of a request: the client address (taken
// from X-Forwarded-For only when the connection comes from a trusted proxy,
// walking from the right past trusted hops), with IPv6 grouped by /64 so
// one host cannot rotate addresses inside its own prefix.
func clientKey(r *http.Request, trusted []netip.Prefix) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	isTrusted := func(a netip.Addr) bool {
		for _, p := range trusted {
			if p.Contains(a.Unmap()) {
				return true
			}
		}
		return false
	}
	if isTrusted(addr) {
		hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
		for i := len(hops) - 1; i >= 0; i-- {
			a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
			if err != nil {
				break
			}
			addr = a
			if !isTrusted(a) {
				break
			}
		}
	}
	addr = addr.Unmap()
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.String()
	}
	return addr.String()
}

func (b *Browser) page(w http.ResponseWriter, code int, d pageData) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	if err := pageTemplate.Execute(w, d); err != nil {
		b.d.Log.Warn("rendering result page", "err", err.Error())
	}
}

// authorize binds this browser to the flow with a cookie and redirects to
// the authorization server.
func (b *Browser) authorize(w http.ResponseWriter, r *http.Request) {
	start, err := b.d.Flow.BeginBrowser(r.Context(), r.PathValue("flow"))
	if err != nil {
		b.startFailed(w, r, err, lostFlowMessage)
		return
	}
	b.bind(w, r, start)
}

// restart starts a lost or expired flow again for the browser holding its
// cookie (see authflow.Service.Restart): the old flow's cookie is replaced
// by the new flow's, and the browser goes to the authorization server.
func (b *Browser) restart(w http.ResponseWriter, r *http.Request) {
	binding, cookie := r.PathValue("binding"), ""
	if c, err := r.Cookie(cookieName(b.d.Secure, binding)); err == nil && validBinding(binding) {
		cookie = c.Value
	}
	start, err := b.d.Flow.Restart(r.Context(), binding, cookie)
	if err != nil {
		msg := "This authorization can no longer be started again from here. Go back to the application and start it again."
		if e, ok := apperr.As(err); ok && e.Reason != domain.ReasonFlowExpiredOrUsed {
			msg = apperr.PublicMessage(err)
		}
		b.startFailed(w, r, err, msg)
		return
	}
	b.clearCookie(w, binding)
	b.bind(w, r, start)
}

// validBinding reports whether s can be a flow's binding (see
// authflow.Binding): 8 base64url characters.
func validBinding(s string) bool {
	if len(s) != 8 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// startFailed shows why a flow could not start: msg for a refusal, a
// reload for a state store that cannot answer now.
func (b *Browser) startFailed(w http.ResponseWriter, r *http.Request, err error, msg string) {
	code, reason := http.StatusBadRequest, domain.ReasonFlowExpiredOrUsed
	if e, ok := apperr.As(err); ok && e.Reason != "" {
		reason = e.Reason
	}
	switch apperr.KindOf(err) {
	case apperr.KindUnavailable:
		w.Header().Set("Retry-After", "2")
		code, msg, reason = http.StatusServiceUnavailable, "mcpauth cannot reach its state store right now. Nothing was lost: reload this page in a moment.", "UNAVAILABLE"
	case apperr.KindInternal:
		b.d.Log.ErrorContext(r.Context(), "authorize route failed", "err", err.Error(), "request_id", reqid.From(r.Context()))
		code, msg, reason = http.StatusInternalServerError, "Something went wrong on mcpauth's side.", "INTERNAL"
	}
	b.page(w, code, pageData{Title: "Authorization cannot start", Message: msg, Reason: reason})
}

// bind sets the flow's cookie in this browser and redirects it to the
// authorization server.
func (b *Browser) bind(w http.ResponseWriter, r *http.Request, start *authflow.BrowserStart) {
	http.SetCookie(w, &http.Cookie{
		Name:     cookieName(b.d.Secure, start.Binding),
		Value:    start.BrowserSecret,
		Path:     "/",
		MaxAge:   int(start.MaxAge / time.Second),
		HttpOnly: true,
		Secure:   b.d.Secure,
		SameSite: http.SameSiteLaxMode,
	})
	http.Redirect(w, r, start.RedirectURL, http.StatusFound)
}

// clearCookie removes a flow's cookie.
func (b *Browser) clearCookie(w http.ResponseWriter, binding string) {
	http.SetCookie(w, &http.Cookie{Name: cookieName(b.d.Secure, binding), Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: b.d.Secure, SameSite: http.SameSiteLaxMode})
}

// callback completes the flow and shows the result (or redirects to the
// caller's return URL). The cookie of the flow is cleared either way, unless
// the state store was unreachable (the flow is then still pending).
func (b *Browser) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	// A repeated parameter (RFC 6749 section 3.1) is refused before the
	// flow is looked at: which of two states or issuers would count is
	// ambiguous, and a forged link carrying a second value must not consume
	// the flow (nor clear its cookie) that the real browser is completing.
	if repeatedParam(q, callbackParams) {
		b.refuseRepeated(w)
		return
	}
	_, issPresent := q["iss"]
	in := authflow.CallbackInput{
		State: q.Get("state"), Code: q.Get("code"), Iss: q.Get("iss"), IssPresent: issPresent,
		Error: q.Get("error"), ErrorDescription: q.Get("error_description"),
		BrowserSecret: func(binding string) string {
			c, err := r.Cookie(cookieName(b.d.Secure, binding))
			if err != nil {
				return ""
			}
			return c.Value
		},
	}
	res := b.d.Flow.Callback(r.Context(), in)
	// When the state store was unreachable the page asks to try again, and
	// when the flow was lost it offers to start again: keep the cookie that
	// the retry or the restart needs.
	if in.State != "" && len(in.State) <= 512 && res.Reason != domain.ReasonUnavailable && res.Restart == "" {
		b.clearCookie(w, authflow.Binding(in.State))
	}
	result := "success"
	if !res.OK {
		result = strings.ToLower(res.Reason)
	}
	if b.d.Metrics != nil {
		b.d.Metrics.CallbackResults.WithLabelValues(result).Inc()
	}
	provider := ""
	if res.Tenant != "" {
		provider = resname.ProviderName(res.Tenant, res.Provider)
	}
	if to := returnRedirect(res, provider); to != "" {
		http.Redirect(w, r, to, http.StatusFound)
		return
	}
	if res.OK {
		b.page(w, http.StatusOK, pageData{OK: true, Title: "Authorization complete", Message: callbackMessages[""], Provider: provider})
		return
	}
	code := http.StatusBadRequest
	if res.Reason == domain.ReasonUnavailable {
		// The flow was not consumed: reloading the callback finishes it.
		w.Header().Set("Retry-After", "2")
		code = http.StatusServiceUnavailable
	}
	msg, ok := callbackMessages[res.Reason]
	if !ok {
		msg = "The authorization could not be completed. Start it again."
	}
	restart := ""
	if res.Restart != "" {
		msg, restart = restartMessage, RestartPath+res.Restart
	}
	b.page(w, code, pageData{Title: "Authorization failed", Message: msg, Detail: res.Detail, Reason: res.Reason, Provider: provider, Restart: restart})
}

// callbackParams are the authorization response parameters the callback
// reads (RFC 6749 sections 4.1.2 and 4.1.2.1, RFC 9207).
var callbackParams = []string{"state", "code", "iss", "error", "error_description", "error_uri"}

// repeatedParam reports whether any of names appears more than once in q.
func repeatedParam(q url.Values, names []string) bool {
	for _, n := range names {
		if len(q[n]) > 1 {
			return true
		}
	}
	return false
}

func (b *Browser) refuseRepeated(w http.ResponseWriter) {
	if b.d.Metrics != nil {
		b.d.Metrics.CallbackResults.WithLabelValues(strings.ToLower(domain.ReasonDuplicateParameter)).Inc()
	}
	b.page(w, http.StatusBadRequest, pageData{Title: "Authorization failed",
		Message: callbackMessages[domain.ReasonDuplicateParameter], Reason: domain.ReasonDuplicateParameter})
}

// returnRedirect is where to send the browser after the callback when the
// flow's starter gave a return URL: that URL with the outcome in its query.
func returnRedirect(res *authflow.CallbackResult, provider string) string {
	if res.ReturnURL == "" {
		return ""
	}
	u, err := url.Parse(res.ReturnURL)
	if err != nil {
		return ""
	}
	q := u.Query()
	q.Set("mcpauth_provider", provider)
	if res.CompletionCode != "" {
		// The platform's backend confirms with CompleteAuthorization.
		q.Set("mcpauth_status", "completion_required")
		q.Set("mcpauth_completion", res.CompletionCode)
	} else if res.OK {
		q.Set("mcpauth_status", "success")
	} else {
		q.Set("mcpauth_status", "error")
		q.Set("mcpauth_reason", res.Reason)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// clientMetadata serves mcpauth's Client ID Metadata Document when it has
// one (public https URL, no external document configured).
func (b *Browser) clientMetadata(w http.ResponseWriter, _ *http.Request) {
	doc := b.d.Flow.ClientMetadataDocument()
	if id, _ := doc["client_id"].(string); !strings.HasSuffix(id, ClientMetadataPath) {
		// None, or one hosted elsewhere.
		http.NotFound(w, nil)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_ = json.NewEncoder(w).Encode(doc)
}

// providerClientMetadata serves a provider's own Client ID Metadata
// Document (authflow's cimd.go). Authorization servers fetch it without
// credentials; it holds public facts only, and anything that is not such a
// provider is one and the same 404.
func (b *Browser) providerClientMetadata(w http.ResponseWriter, r *http.Request) {
	tenant, id := r.PathValue("tenant"), r.PathValue("provider")
	if _, _, err := resname.ParseProvider("name", resname.ProviderName(tenant, id)); err != nil {
		http.NotFound(w, r)
		return
	}
	doc, err := b.d.Flow.ProviderClientMetadataDocument(r.Context(), tenant, id)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_ = json.NewEncoder(w).Encode(doc)
}

// ipLimiter is a per-client-IP token bucket with idle entries swept.
type ipLimiter struct {
	mu      sync.Mutex
	perMin  int
	buckets map[string]*ipBucket
	lastGC  time.Time
}

type ipBucket struct {
	l    *rate.Limiter
	seen time.Time
}

// maxBuckets bounds the limiter's memory.
const maxBuckets = 100_000

func newIPLimiter(perMinute int) *ipLimiter {
	return &ipLimiter{perMin: perMinute, buckets: map[string]*ipBucket{}, lastGC: time.Now()}
}

func (l *ipLimiter) allow(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Sub(l.lastGC) > time.Minute {
		for k, b := range l.buckets {
			if now.Sub(b.seen) > 5*time.Minute {
				delete(l.buckets, k)
			}
		}
		l.lastGC = now
	}
	b, ok := l.buckets[ip]
	if !ok {
		if len(l.buckets) >= maxBuckets {
			// Never refuse a newcomer because others flooded the table:
			// forget the idle, and if that is not enough, start afresh.
			for k, b := range l.buckets {
				if now.Sub(b.seen) > time.Minute {
					delete(l.buckets, k)
				}
			}
			if len(l.buckets) >= maxBuckets {
				l.buckets = map[string]*ipBucket{}
			}
		}
		b = &ipBucket{l: rate.NewLimiter(rate.Limit(float64(l.perMin)/60), max(l.perMin/4, 5))}
		l.buckets[ip] = b
	}
	b.seen = now
	return b.l.Allow()
}
