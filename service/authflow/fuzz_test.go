package authflow

import (
	"context"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// maxDetail bounds what a callback shows of an authorization server's
// error: the cut code and description, their separator and ellipses.
const maxDetail = 64 + len(": ") + 200 + 2*len("…")

// FuzzCallback delivers arbitrary authorization responses to a real flow,
// with the flow's own or fuzzed state, browser secret and code. The
// callback must never panic; succeed only for the genuine response; send
// the code to the token endpoint only after the browser binding, the
// issuer and the absence of an error were checked; give every failure a
// reason; show upstream text only for an authorization error, bounded and
// without control characters; and consume and audit the flow exactly when
// its state came back.
func FuzzCallback(f *testing.F) {
	f.Add(true, true, true, testIssuer, true, "", "", "")
	f.Add(true, true, true, "", false, "", "", "")
	f.Add(true, false, true, testIssuer, true, "", "", "cookie")
	f.Add(true, true, false, testIssuer, true, "", "", "forged-code")
	f.Add(true, true, true, testIssuer, true, "access_denied", "<script>alert(1)</script>", "")
	f.Add(true, true, true, testIssuer, true, "e\x07", "d\x1b[31m\u202e"+strings.Repeat("x", 300), "\x00")
	f.Add(false, true, true, testIssuer, true, "", "", strings.Repeat("s", 600))
	f.Add(false, false, false, "\u202e", true, "\r\n", "\xff", "")
	f.Fuzz(func(t *testing.T, realState, realSecret, realCode bool, iss string, issPresent bool, errCode, desc, junk string) {
		e := newProviderEnv(t, providerSpec{})
		fl := e.authorize(t, startIn())
		in := CallbackInput{State: junk, Code: junk, Iss: iss, IssPresent: issPresent, Error: errCode, ErrorDescription: desc,
			BrowserSecret: func(string) string { return junk }}
		if realState {
			in.State = fl.auth.State
		}
		if realSecret {
			in.BrowserSecret = fl.cookie
		}
		if realCode {
			in.Code = fl.auth.Code
		}
		res := e.svc.Callback(context.Background(), in)

		ownState := in.State == fl.auth.State
		checked := ownState && in.BrowserSecret(fl.browser.Binding) == fl.browser.BrowserSecret && issPresent && iss == testIssuer && errCode == ""
		switch {
		case res == nil:
			t.Fatal("no result")
		case res.OK != (checked && in.Code == fl.auth.Code):
			t.Fatalf("Callback = %+v for a response that is genuine: %v", res, checked && in.Code == fl.auth.Code)
		case !res.OK && res.Reason == "":
			t.Fatalf("failure without a reason: %+v", res)
		case e.as.counts().exchanges > 0 && !checked:
			t.Fatalf("the code reached the token endpoint before the checks passed: %+v", res)
		case res.Detail != "" && res.Reason != domain.ReasonAuthorizationDenied:
			t.Fatalf("upstream text shown for %s: %q", res.Reason, res.Detail)
		case len(res.Detail) > maxDetail:
			t.Fatalf("detail of %d bytes", len(res.Detail))
		}
		for _, r := range res.Detail {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("detail keeps a control character: %q", res.Detail)
			}
		}
		failed := e.events(domain.EventCallbackFailed)
		switch {
		case res.OK:
			e.wantStatus(t, testProvider, domain.StatusAuthorized, "")
		case ownState && res.Reason == domain.ReasonBrowserMismatch:
			// Another browser: audited, but the flow stays for its own.
			if len(failed) != 1 || failed[0].Reason != res.Reason {
				t.Fatalf("callback.failed events %+v for %s", failed, res.Reason)
			}
			e.wantStatus(t, testProvider, domain.StatusPending, "")
			e.complete(t, fl)
		case ownState:
			if len(failed) != 1 || failed[0].Reason != res.Reason {
				t.Fatalf("callback.failed events %+v for %s", failed, res.Reason)
			}
			e.wantStatus(t, testProvider, domain.StatusUnauthorized, res.Reason)
		default:
			// Another state neither consumes nor fails this flow.
			if len(failed) != 0 {
				t.Fatalf("callback.failed events %+v for an unknown state", failed)
			}
			e.complete(t, fl)
		}
	})
}

// FuzzBeginBrowser opens arbitrary handles, and the real one with an
// arbitrary suffix: only the exact handle starts the flow, once, with a
// request the authorization server accepts; anything else is refused as
// expired or used and leaves the real flow usable.
func FuzzBeginBrowser(f *testing.F) {
	f.Add("", true)
	f.Add("x", true)
	f.Add("abc", false)
	f.Add(strings.Repeat("x", 200), false)
	f.Add("\x00\xff", false)
	f.Fuzz(func(t *testing.T, h string, withReal bool) {
		ctx := context.Background()
		e := newProviderEnv(t, providerSpec{})
		st, err := e.svc.Start(ctx, startIn())
		if err != nil {
			t.Fatal(err)
		}
		real, candidate := handle(t, st), h
		if withReal {
			candidate = real + h
		}
		b, err := e.svc.BeginBrowser(ctx, candidate)
		if candidate == real {
			if err != nil {
				t.Fatalf("the real handle was refused: %v", err)
			}
			auth, err := e.as.Authorize(b.RedirectURL)
			if err != nil || Binding(auth.State) != b.Binding {
				t.Fatalf("authorization request refused (%v) or binding %q not derived from its state", err, b.Binding)
			}
		} else {
			wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonFlowExpiredOrUsed)
			if _, err := e.svc.BeginBrowser(ctx, real); err != nil {
				t.Fatalf("a wrong handle spent the real flow: %v", err)
			}
		}
		_, err = e.svc.BeginBrowser(ctx, real)
		wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonFlowExpiredOrUsed)
	})
}
