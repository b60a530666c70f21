package mcpclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// recordingTransport answers 200 to everything and keeps the requests.
type recordingTransport struct{ reqs []*http.Request }

func (rt *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	rt.reqs = append(rt.reqs, req)
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: req}, nil
}

func TestRoundTripperCredentials(t *testing.T) {
	t.Parallel()
	target, _ := url.Parse("https://mcp.example.com/mcp")
	base := &recordingTransport{}
	rt := newRoundTripper(base, target, Credentials{
		Headers: map[string]string{
			"x-api-key":     "k",
			"Authorization": "Basic loses",
			"Accept":        "text/plain", // must not replace the SDK's Accept
		},
		AccessToken: secretOf("tok"),
	}, newSessionState(1<<20), nil)

	send := func(rawURL string) http.Header {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, rawURL, nil)
		req.Header.Set("Accept", "application/json, text/event-stream")
		if _, err := rt.RoundTrip(req); err != nil {
			t.Fatal(err)
		}
		if req.Header.Get("Authorization") != "" {
			t.Fatal("the caller's request was modified")
		}
		return base.reqs[len(base.reqs)-1].Header
	}

	h := send("https://MCP.example.com/mcp?x=1")
	if h.Get("Authorization") != "Bearer tok" || h.Get("X-Api-Key") != "k" {
		t.Fatalf("same origin: headers %v", h)
	}
	if h.Get("Accept") != "application/json, text/event-stream" {
		t.Fatalf("custom header replaced the SDK's Accept: %q", h.Get("Accept"))
	}
	for _, other := range []string{"https://evil.example.com/mcp", "http://mcp.example.com/mcp", "https://mcp.example.com:8443/mcp"} {
		h := send(other)
		if h.Get("Authorization") != "" || h.Get("X-Api-Key") != "" {
			t.Fatalf("credentials sent to %s: %v", other, h)
		}
	}
}

func TestNewAuthError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		status    int
		headers   []string
		insuff    bool
		scopes    []string
		challenge bool
	}{
		{"none", 401, nil, false, nil, false},
		{"plain", 401, []string{`Bearer resource_metadata="https://x/.well-known/oauth-protected-resource"`}, false, nil, true},
		{"insufficient", 403, []string{`Bearer error="insufficient_scope", scope="a b"`}, true, []string{"a", "b"}, true},
		{"after basic", 403, []string{`Basic realm="x", Bearer error="insufficient_scope", scope="files:read"`}, true, []string{"files:read"}, true},
		{"two headers", 403, []string{`Basic realm="x"`, `Bearer error="insufficient_scope", scope="a a \"b"`}, true, []string{"a"}, true},
		{"scope on 401", 401, []string{`Bearer scope="read"`}, false, []string{"read"}, true},
		{"malformed", 401, []string{`Bearer error="unterminated`}, false, nil, true},
		{"too long", 401, []string{"Bearer scope=\"" + strings.Repeat("a", maxChallengeBytes) + "\""}, false, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newAuthError(tc.status, tc.headers)
			if e.Status != tc.status || e.InsufficientScope != tc.insuff || !slices.Equal(e.Scopes, tc.scopes) || (e.Challenge != "") != tc.challenge {
				t.Fatalf("got %+v", e)
			}
			if strings.Contains(e.Error(), "scope=") {
				t.Fatalf("message carries the challenge: %q", e.Error())
			}
		})
	}
}

func FuzzNewAuthError(f *testing.F) {
	f.Add(`Bearer error="insufficient_scope", scope="a b"`)
	f.Add(`Basic realm="x", Bearer resource_metadata="https://x/y"`)
	f.Add(`Bearer error=,,,, scope="`)
	f.Fuzz(func(t *testing.T, h string) {
		e := newAuthError(http.StatusForbidden, []string{h})
		for _, s := range e.Scopes {
			// RFC 6749 scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
			if s == "" || strings.ContainsFunc(s, func(r rune) bool { return r < 0x21 || r > 0x7e || r == '"' || r == '\\' }) {
				t.Fatalf("invalid scope token %q", s)
			}
		}
		if len(e.Challenge) > maxChallengeBytes {
			t.Fatal("oversized challenge kept")
		}
	})
}

func TestLimitBody(t *testing.T) {
	t.Parallel()
	read := func(body string, max int64, events bool) error {
		exceeded := false
		b := &limitBody{rc: io.NopCloser(strings.NewReader(body)), max: max, events: events, lineStart: true, onExceed: func() { exceeded = true }}
		_, err := io.Copy(io.Discard, b)
		if errors.Is(err, ErrResultTooLarge) != exceeded {
			t.Fatalf("error %v but onExceed called: %v", err, exceeded)
		}
		return err
	}
	event := "data: " + strings.Repeat("x", 50) + "\n\n" // 58 bytes
	for _, tc := range []struct {
		name   string
		body   string
		max    int64
		events bool
		ok     bool
	}{
		{"json at cap", strings.Repeat("x", 100), 100, false, true},
		{"json over cap", strings.Repeat("x", 101), 100, false, false},
		{"many small events", strings.Repeat(event, 100), 60, true, true},
		{"crlf events", strings.Repeat(strings.ReplaceAll(event, "\n", "\r\n"), 100), 60, true, true},
		{"one big event", "data: " + strings.Repeat("x", 100) + "\n\n", 60, true, false},
		{"multi-line event", "data: aaaaaaaaaa\ndata: bbbbbbbbbb\ndata: cccccccccc\n\n", 30, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := read(tc.body, tc.max, tc.events); (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestRedactURLs(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		`Post "https://h.example:8443/mcp/SECRET?key=SECRET": EOF`:        `Post "https://h.example:8443": EOF`,
		`dial http://user:SECRET@h/x failed`:                              `dial http://h failed`,
		`no url here`:                                                     `no url here`,
		`GET HTTP://H.example/SECRET?q and https://other/SECRET#frag end`: `GET HTTP://H.example and https://other end`,
	} {
		if got := redactURLs(in); got != want {
			t.Errorf("redactURLs(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestPeerRejectionOrdersBySendTime: a call that failed without an answer
// of its own on a session whose token the server rejected is reported as
// that 401 (retry with a new token) only if its request went out after the
// rejection; one sent before may have run, and stays UNAVAILABLE.
func TestPeerRejectionOrdersBySendTime(t *testing.T) {
	t.Parallel()
	tgt := Target{Timeout: time.Second}
	closed := fmt.Errorf("calling tool: %w", mcp.ErrConnectionClosed)
	for _, tc := range []struct {
		name      string
		sentAfter bool
		want401   bool
	}{
		{"sent after the 401", true, true},
		{"sent before the 401: may have run", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ss := newSessionState(1 << 20)
			cs, done := newCall(context.Background(), tgt)
			defer done()
			cs.requests.Add(1)
			if tc.sentAfter {
				ss.recordRejected([]string{`Bearer error="invalid_token"`})
				time.Sleep(time.Millisecond)
				cs.sentAt.Store(time.Now().UnixNano())
			} else {
				cs.sentAt.Store(time.Now().UnixNano())
				time.Sleep(time.Millisecond)
				ss.recordRejected(nil)
			}
			cs.record(0, nil, errors.New("context canceled"))
			err := classify("tools/call", closed, cs, ss, tgt)
			var ae *AuthError
			if got := errors.As(err, &ae) && ae.Status == http.StatusUnauthorized; got != tc.want401 {
				t.Fatalf("classify = %v; 401 %v, want %v", err, got, tc.want401)
			}
			if !tc.want401 && !errors.Is(err, ErrUnreachable) {
				t.Fatalf("classify = %v, want ErrUnreachable", err)
			}
		})
	}
}
