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
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/service"
)

// BrowserFlow is the browser side of the OAuth flow.
// *service.OAuthService implements it.
type BrowserFlow interface {
	BeginBrowser(ctx context.Context, handle string, secure bool) (*service.BrowserStart, error)
	Callback(ctx context.Context, in service.CallbackInput) *service.CallbackResult
	ClientMetadataURL() string
	ClientMetadataDocument() map[string]any
}

var _ BrowserFlow = (*service.OAuthService)(nil)

// BrowserDeps are what NewBrowser needs.
type BrowserDeps struct {
	Log  *slog.Logger
	Flow BrowserFlow
	// Secure selects __Host- cookies (the public URL is https).
	Secure bool
	// TLS adds HSTS (this process terminates TLS).
	TLS           bool
	RatePerMinute int
	Metrics       *metrics.Metrics
	// TrustedProxies are the proxies whose X-Forwarded-For is believed when
	// rate limiting; empty means the connection's address is the client.
	TrustedProxies []netip.Prefix
}

// Browser serves the routes a person's browser visits: the authorize
// redirect, the OAuth callback (and its Dify-compatible alias), and the
// Client ID Metadata Document.
type Browser struct {
	d       BrowserDeps
	limiter *ipLimiter
}

// NewBrowser returns the browser routes.
func NewBrowser(d BrowserDeps) *Browser {
	if d.RatePerMinute <= 0 {
		d.RatePerMinute = 60
	}
	return &Browser{d: d, limiter: newIPLimiter(d.RatePerMinute)}
}

// Register adds the routes to mux. Only GET (and HEAD) is served; other
// methods on the browser paths answer 405 here, rather than falling through
// to the REST gateway under /v1/.
func (b *Browser) Register(mux *http.ServeMux) {
	for path, h := range map[string]http.HandlerFunc{
		"/v1/oauth/authorize/{flow}":      b.authorize,
		"/v1/oauth/callback":              b.callback,
		"/console/api/mcp/oauth/callback": b.callback,
	} {
		mux.Handle("GET "+path, b.guard(h))
		mux.Handle(path, b.guard(http.HandlerFunc(methodNotAllowed)))
	}
	mux.HandleFunc("GET "+service.ClientMetadataPath, b.clientMetadata)
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
</body></html>
`))

type pageData struct {
	OK                                       bool
	Title, Message, Detail, Reason, Provider string
}

// guard applies the browser routes' hardening: strict caching, referrer and
// framing policy, a tight CSP, and a per-IP rate limit.
func (b *Browser) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("Pragma", "no-cache")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Content-Security-Policy", pageCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		if b.d.TLS {
			h.Set("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
		}
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
	start, err := b.d.Flow.BeginBrowser(r.Context(), r.PathValue("flow"), b.d.Secure)
	if err != nil {
		code, msg, reason := http.StatusBadRequest, "This authorization link has expired or was already used. Start the authorization again.", "FLOW_EXPIRED_OR_USED"
		if apperr.KindOf(err) == apperr.KindUnavailable {
			code, msg, reason = http.StatusServiceUnavailable, "mcpauth cannot reach its state store right now. Try again in a moment.", "UNAVAILABLE"
		} else if apperr.KindOf(err) == apperr.KindInternal {
			b.d.Log.ErrorContext(r.Context(), "authorize route failed", "err", err.Error())
			code, msg, reason = http.StatusInternalServerError, "Something went wrong on mcpauth's side.", "INTERNAL"
		}
		b.page(w, code, pageData{Title: "Authorization cannot start", Message: msg, Reason: reason})
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name:     start.CookieName,
		Value:    start.CookieValue,
		Path:     "/",
		MaxAge:   int(start.MaxAge / time.Second),
		HttpOnly: true,
		Secure:   b.d.Secure,
		SameSite: http.SameSiteLaxMode,
	})
	http.Redirect(w, r, start.RedirectURL, http.StatusFound)
}

// callback completes the flow and shows the result (or redirects to the
// caller's return URL). The cookie of the flow is cleared either way, unless
// the state store was unreachable (the flow is then still pending).
func (b *Browser) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	_, issPresent := q["iss"]
	in := service.CallbackInput{
		State: q.Get("state"), Code: q.Get("code"), Iss: q.Get("iss"), IssPresent: issPresent,
		Error: q.Get("error"), ErrorDescription: q.Get("error_description"), Secure: b.d.Secure,
		Cookie: func(name string) string {
			c, err := r.Cookie(name)
			if err != nil {
				return ""
			}
			return c.Value
		},
	}
	res := b.d.Flow.Callback(r.Context(), in)
	// When the state store was unreachable the flow was not consumed and the
	// page asks to try again: keep the cookie that retry needs.
	if in.State != "" && len(in.State) <= 512 && res.Reason != "UNAVAILABLE" {
		http.SetCookie(w, &http.Cookie{Name: service.CookieName(b.d.Secure, in.State), Value: "", Path: "/", MaxAge: -1,
			HttpOnly: true, Secure: b.d.Secure, SameSite: http.SameSiteLaxMode})
	}
	result := "success"
	if !res.OK {
		result = strings.ToLower(res.Reason)
	}
	if b.d.Metrics != nil {
		b.d.Metrics.CallbackResults.WithLabelValues(result).Inc()
	}
	if res.Redirect != "" {
		http.Redirect(w, r, res.Redirect, http.StatusFound)
		return
	}
	if res.OK {
		b.page(w, http.StatusOK, pageData{OK: true, Title: "Authorization complete", Message: res.Message, Provider: res.ProviderName})
		return
	}
	code := http.StatusBadRequest
	if res.Reason == "UNAVAILABLE" {
		code = http.StatusServiceUnavailable
	}
	b.page(w, code, pageData{Title: "Authorization failed", Message: res.Message, Detail: res.Detail, Reason: res.Reason, Provider: res.ProviderName})
}

// clientMetadata serves mcpauth's Client ID Metadata Document when it has
// one (public https URL, no external document configured).
func (b *Browser) clientMetadata(w http.ResponseWriter, _ *http.Request) {
	if !strings.HasSuffix(b.d.Flow.ClientMetadataURL(), service.ClientMetadataPath) {
		http.NotFound(w, nil)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_ = json.NewEncoder(w).Encode(b.d.Flow.ClientMetadataDocument())
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
