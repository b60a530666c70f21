package authflow

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/grants"
	"github.com/mcpauth/mcpauth/statestore"
)

// newFuzzOAuth wires a real OAuthService on a SQLite file and the
// in-process flow store.
func newFuzzOAuth(tb testing.TB) (*Service, statestore.Store) {
	tb.Helper()
	ctx := context.Background()
	st, err := repository.Open(ctx, filepath.Join(tb.TempDir(), "fuzz.db"), repository.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	if err := st.Migrate(ctx); err != nil {
		tb.Fatal(err)
	}
	spec, err := keyring.GenerateSpec(1)
	if err != nil {
		tb.Fatal(err)
	}
	keys, err := keyring.Parse(spec)
	if err != nil {
		tb.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	proto, err := oauthclient.New(&http.Client{})
	if err != nil {
		tb.Fatal(err)
	}
	flows := statestore.NewMemory()
	tb.Cleanup(func() { flows.Close() })
	auditor := audit.NewAuditor(st, log, nil)
	tb.Cleanup(auditor.Close)
	tokens, err := grants.New(grants.Deps{Store: st, Cipher: keys, Proto: proto, Locks: flows, Audit: auditor, Log: log, Metrics: metrics.New()})
	if err != nil {
		tb.Fatal(err)
	}
	svc, err := New(Deps{Store: st, Cipher: keys, Flows: flows, Proto: proto, Audit: auditor, Log: log, Grants: tokens,
		Config: Config{AuthorizeURLPrefix: "http://localhost:8080/v1/oauth/authorize/", CallbackURL: "http://localhost:8080/v1/oauth/callback"}})
	if err != nil {
		tb.Fatal(err)
	}
	return svc, flows
}

// FuzzCallback feeds arbitrary authorization responses to the callback:
// it must never panic, never succeed without a flow, and never show text
// with control characters.
func FuzzCallback(f *testing.F) {
	f.Add("state", "code", "https://as.example", true, "", "", "cookie")
	f.Add("", "", "", false, "access_denied", "<script>alert(1)</script>", "")
	f.Add(strings.Repeat("s", 600), "c", "", false, "", "", "")
	f.Add("\x00\xff", "\r\n", "\u202e", true, "e\x07", "d\x1b[31m", "\x00")
	svc, _ := newFuzzOAuth(f)
	f.Fuzz(func(t *testing.T, state, code, iss string, issPresent bool, errCode, desc, cookie string) {
		res := svc.Callback(context.Background(), CallbackInput{State: state, Code: code, Iss: iss, IssPresent: issPresent,
			Error: errCode, ErrorDescription: desc, BrowserSecret: func(string) string { return cookie }})
		if res == nil || res.OK {
			t.Fatalf("callback without a flow succeeded: %+v", res)
		}
		if res.Reason == "" {
			t.Fatalf("failure without a reason: %+v", res)
		}
		for _, r := range res.Detail {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("detail keeps a control character: %q", res.Detail)
			}
		}
	})
}

// FuzzBeginBrowser feeds arbitrary flow handles to the authorize route.
func FuzzBeginBrowser(f *testing.F) {
	f.Add("abc")
	f.Add(strings.Repeat("x", 200))
	svc, _ := newFuzzOAuth(f)
	f.Fuzz(func(t *testing.T, handle string) {
		if _, err := svc.BeginBrowser(context.Background(), handle); err == nil {
			t.Fatal("unknown flow handle accepted")
		}
	})
}
