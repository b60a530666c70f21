package dpop

import (
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/oauthex"
)

// maxNonceLen bounds a remembered nonce; RFC 9449 section 8.1 gives its
// syntax (1*NQCHAR) but no length, and a server's header is untrusted.
const maxNonceLen = 512

// defaultNonceEntries bounds how many servers' nonces are remembered.
const defaultNonceEntries = 4096

// Nonces remembers the latest nonce each server gave (RFC 9449 sections
// 8.2 and 9: a server may send a new one with any response, and the client
// uses the newest in its next proof). Servers are told apart by origin. It
// is safe for concurrent use; the zero value is not, use NewNonces.
type Nonces struct {
	mu  sync.Mutex
	m   map[string]string
	max int
}

// NewNonces makes an empty nonce memory.
func NewNonces() *Nonces { return &Nonces{m: map[string]string{}, max: defaultNonceEntries} }

// Origin is the key nonces are remembered under: scheme://host, lower case.
func Origin(u *url.URL) string { return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host) }

// Get returns the nonce last seen from origin, "" when none.
func (n *Nonces) Get(origin string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.m[origin]
}

// Note remembers the DPoP-Nonce of a response from origin, when it has a
// valid one, and returns it ("" when none).
func (n *Nonces) Note(origin string, h http.Header) string {
	v := h.Get(HeaderNonce)
	if !validNonce(v) {
		return ""
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.m[origin]; !ok && len(n.m) >= n.max {
		// Full: forget an arbitrary server. It costs that server one extra
		// round trip (its use_dpop_nonce answer), never a failure.
		for k := range n.m {
			delete(n.m, k)
			break
		}
	}
	n.m[origin] = v
	return v
}

// validNonce checks RFC 9449 section 8.1: nonce = 1*NQCHAR, NQCHAR =
// %x21 / %x23-5B / %x5D-7E.
func validNonce(s string) bool {
	if s == "" || len(s) > maxNonceLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// ResourceNonceChallenge reports whether a resource server's 401 asks for
// a nonce (RFC 9449 section 9: WWW-Authenticate: DPoP
// error="use_dpop_nonce", with a DPoP-Nonce header).
func ResourceNonceChallenge(status int, h http.Header) bool {
	if status != http.StatusUnauthorized || !validNonce(h.Get(HeaderNonce)) {
		return false
	}
	chs, err := oauthex.ParseWWWAuthenticate(h.Values("WWW-Authenticate"))
	if err != nil {
		return false
	}
	for _, ch := range chs {
		if strings.EqualFold(ch.Scheme, Scheme) && ch.Params["error"] == ErrUseNonce {
			return true
		}
	}
	return false
}
