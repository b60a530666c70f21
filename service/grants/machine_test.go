package grants

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/servicetest"
	"github.com/mcpauth/mcpauth/service/vault"
)

// machineService is the environment's service able to obtain tokens
// without a person, at the fake server.
func (e *env) machineService() *Service {
	e.tb.Helper()
	return e.machineServiceOver(e.store)
}

// machineServiceOver is machineService over store (a wrapped store).
func (e *env) machineServiceOver(store Store) *Service {
	e.tb.Helper()
	s, err := New(Deps{Store: store, Cipher: e.keys, Proto: e.as, Locks: e.locks, Audit: e.auditor, Reads: e.reads, Log: e.log,
		Now: e.clock.Now, Config: testConfig, Metrics: metrics.New(),
		Machine: MachineDeps{Discover: fakeDiscovery{}, Proto: e.as}})
	if err != nil {
		e.tb.Fatal(err)
	}
	return s
}

// clientCredentialsProvider creates a client_credentials provider whose
// client is clientID with secret sec.
func (e *env) clientCredentialsProvider(clientID, sec string) {
	e.tb.Helper()
	row := &repository.Provider{TenantID: tnt, ID: pid, DisplayName: pid, ServerIdentifier: pid, URLHash: "k1:" + pid,
		ServerURL: e.seal(tnt, pid, vault.FieldServerURL, serverURL(pid)), Scopes: "[]", KeyID: e.keys.PrimaryID(),
		CredentialKind: string(domain.KindClientCredentials), ClientID: clientID,
		ClientSecret: e.seal(tnt, pid, vault.FieldClientSecret, sec)}
	if err := e.store.CreateProvider(e.ctx, row); err != nil {
		e.tb.Fatal(err)
	}
}

// setClient is an operator's UpdateProvider that replaces the provider's
// client credentials, in the store as providers.Service.Update writes it
// (the new row, its version bumped, the grant reset).
func (e *env) setClient(clientID, sec string) {
	e.tb.Helper()
	row, err := e.store.GetProvider(e.ctx, tnt, pid)
	if err != nil {
		e.tb.Error(err)
		return
	}
	row.ClientID, row.ClientSecret = clientID, e.seal(tnt, pid, vault.FieldClientSecret, sec)
	if err := e.store.UpdateProviderResettingCredentials(e.ctx, row, row.Version); err != nil {
		e.tb.Error(err)
	}
}

// wantStoreRefusals checks the oauth.token.obtain_failed events of tokens
// obtained under a provider row that changed before they were stored.
func (e *env) wantStoreRefusals(n int) {
	e.tb.Helper()
	var reasons []string
	for range n {
		reasons = append(reasons, domain.ReasonProviderChanged)
	}
	for _, ev := range e.wantEvents(domain.EventTokenObtainFailed, pid, domain.OutcomeFailure, reasons...) {
		if d := details(e.tb, ev); d["step"] != stepStore || d["kind"] != string(domain.KindClientCredentials) {
			e.tb.Errorf("obtain_failed details = %v, want step %q, kind %q", d, stepStore, domain.KindClientCredentials)
		}
	}
}

// A token the server issued with the provider's old client while an
// UpdateProvider replaced that client commits is never stored: it is
// revoked (as the client it was issued to) and audited, and the caller
// gets a token obtained again with the new client.
func TestMachineTokenOfAReplacedClientIsNotStored(t *testing.T) {
	e := newEnv(t, testConfig)
	svc := e.machineService()
	e.as.addClient("cc-old", "old-secret")
	e.as.addClient("cc-new", "new-secret")
	e.clientCredentialsProvider("cc-old", "old-secret")
	var once sync.Once
	e.as.set(func(f *fakeAS) {
		// The operator's update commits after the server issued the token,
		// before mcpauth stores it.
		f.onIssue = func() { once.Do(func() { e.setClient("cc-new", "new-secret") }) }
	})

	tok := e.get(svc, tnt, pid)

	issued := e.as.issued()
	if len(issued) != 2 || !strings.Contains(issued[0], "cc-old") || !strings.Contains(issued[1], "cc-new") {
		t.Fatalf("issued = %q, want one token for cc-old, then one for cc-new", issued)
	}
	if got := tok.AccessToken.Reveal(); got != issued[1] {
		t.Errorf("served %q, want the new client's %q", got, issued[1])
	}
	h := e.held(tnt, pid)
	if h.Tokens.AccessToken.Reveal() != issued[1] || h.Grant.ClientID != "cc-new" {
		t.Errorf("stored %q of client %q, want %q of cc-new", h.Tokens.AccessToken.Reveal(), h.Grant.ClientID, issued[1])
	}
	if got, want := e.as.revocations(), []revocation{{token: issued[0], hint: "access_token"}}; !slices.Equal(got, want) {
		t.Errorf("revocations = %v, want %v", got, want)
	}
	e.wantStoreRefusals(1)
	e.wantEvents(domain.EventTokenObtained, pid, domain.OutcomeSuccess, "")
	e.wantEvents(domain.EventRevocationFailed, pid, domain.OutcomeFailure)
	// Served from the store from now on.
	if got := e.get(svc, tnt, pid).AccessToken.Reveal(); got != issued[1] {
		t.Errorf("next read served %q, want %q", got, issued[1])
	}
	if n := len(e.as.issued()); n != 2 {
		t.Errorf("server asked %d times, want 2", n)
	}
}

// The server's refusal of the old secret, answered while an update that
// fixes the secret commits, is not stored as the grant's verdict (which
// every read would answer until RevokeAuthorization): the token is asked
// for again with the new secret.
func TestMachineRefusalOfAReplacedSecretIsNotStored(t *testing.T) {
	e := newEnv(t, testConfig)
	svc := e.machineService()
	e.as.addClient("cc", "right-secret")
	e.clientCredentialsProvider("cc", "wrong-secret")
	var once sync.Once
	e.as.set(func(f *fakeAS) {
		f.onIssue = func() { once.Do(func() { e.setClient("cc", "right-secret") }) }
	})

	tok := e.get(svc, tnt, pid)

	issued := e.as.issued()
	if len(issued) != 1 || tok.AccessToken.Reveal() != issued[0] {
		t.Fatalf("served %q, issued %q: want the one token issued for the new secret", tok.AccessToken.Reveal(), issued)
	}
	e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
	// The refusal itself is audited, as it was answered.
	e.wantEvents(domain.EventTokenObtainFailed, pid, domain.OutcomeFailure, domain.ReasonInvalidClient)
	e.wantEvents(domain.EventTokenObtained, pid, domain.OutcomeSuccess, "")
}

// A provider changed again while the token is asked for the second time
// answers PROVIDER_CHANGED: nothing is stored, both tokens are revoked.
func TestMachineProviderChangedTwice(t *testing.T) {
	e := newEnv(t, testConfig)
	svc := e.machineService()
	e.as.addClient("cc-a", "secret-a")
	e.as.addClient("cc-b", "secret-b")
	e.clientCredentialsProvider("cc-a", "secret-a")
	n := 0
	e.as.set(func(f *fakeAS) {
		f.onIssue = func() {
			n++
			if n%2 == 1 {
				e.setClient("cc-b", "secret-b")
			} else {
				e.setClient("cc-a", "secret-a")
			}
		}
	})

	_, err := svc.Get(e.ctx, domain.TenantGrant(tnt, pid))

	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonProviderChanged)
	if c := e.store.Credential(tnt, pid); c != nil {
		t.Errorf("stored %+v, want nothing", c)
	}
	issued := e.as.issued()
	want := []revocation{{token: issued[0], hint: "access_token"}, {token: issued[1], hint: "access_token"}}
	if got := e.as.revocations(); len(issued) != 2 || !slices.Equal(got, want) {
		t.Errorf("issued %q, revocations %v: want both revoked", issued, got)
	}
	e.wantStoreRefusals(2)
	e.wantEvents(domain.EventTokenObtained, pid, domain.OutcomeSuccess)
}

// A token obtained while another writer stored the grant first is not
// kept: the other writer's grant is served, and ours, used by nobody, is
// revoked at the server.
func TestMachineTokenThatLostTheRaceIsRevoked(t *testing.T) {
	e := newEnv(t, testConfig)
	svc := e.machineService()
	e.as.addClient("cc", "secret")
	e.clientCredentialsProvider("cc", "secret")
	theirs := &oauthclient.Tokens{AccessToken: secret.New("theirs-access"), TokenType: "Bearer", ExpiresAt: e.clock.Now().Add(time.Hour)}
	var once sync.Once
	e.as.set(func(f *fakeAS) {
		// Another writer (a replica whose lease ran out meanwhile) stores
		// its grant after the server issued ours, before ours is stored.
		f.onIssue = func() {
			once.Do(func() {
				row, err := e.store.GetProvider(e.ctx, tnt, pid)
				if err != nil {
					t.Error(err)
					return
				}
				g := vault.Grant{Issuer: issuer, TokenEndpoint: tokenEndpoint, RevocationEndpoint: revocationEndpoint,
					RegMethod: domain.RegPreRegistered, ClientID: "cc", Kind: domain.KindClientCredentials}
				if err := e.svc.StoreNew(e.ctx, row, "", g, theirs); err != nil {
					t.Error(err)
				}
			})
		}
	})

	tok := e.get(svc, tnt, pid)

	issued := e.as.issued()
	if len(issued) != 1 {
		t.Fatalf("issued = %q, want one token", issued)
	}
	if got := tok.AccessToken.Reveal(); got != "theirs-access" {
		t.Errorf("served %q, want the grant stored first", got)
	}
	if h := e.held(tnt, pid); h.Tokens.AccessToken.Reveal() != "theirs-access" {
		t.Errorf("stored %q, want the grant stored first", h.Tokens.AccessToken.Reveal())
	}
	if got, want := e.as.revocations(), []revocation{{token: issued[0], hint: "access_token"}}; !slices.Equal(got, want) {
		t.Errorf("revocations = %v, want %v (ours only)", got, want)
	}
}

// failWrite is store whose PutCredentialAtProvider answers answer (after
// storing, when committed) and whose next failedReads GetCredential calls
// after it fail (errInjected).
func failWrite(store *servicetest.Store, answer error, committed bool, failedReads int) *hookStore {
	hs := &hookStore{Store: store}
	var mu sync.Mutex
	written, failed := false, 0
	hs.afterPutAt = func(error) error {
		mu.Lock()
		defer mu.Unlock()
		written = true
		return answer
	}
	if !committed {
		store.FailOn("PutCredentialAtProvider", answer)
	}
	hs.failGet = func() error {
		mu.Lock()
		defer mu.Unlock()
		if !written || failed == failedReads {
			return nil
		}
		failed++
		return errInjected
	}
	return hs
}

// wantOneIssued checks that the server issued one token, revoked (access
// token hint) when revoked and not otherwise, and returns it.
func (e *env) wantOneIssued(t *testing.T, revoked bool) string {
	t.Helper()
	issued := e.as.issued()
	if len(issued) != 1 {
		t.Fatalf("issued = %q, want one token", issued)
	}
	var want []revocation
	if revoked {
		want = []revocation{{token: issued[0], hint: "access_token"}}
	}
	if got := e.as.revocations(); !slices.Equal(got, want) {
		t.Errorf("revocations = %v, want %v", got, want)
	}
	return issued[0]
}

// wantStoreFailed checks the one oauth.token.obtain_failed event of a
// write that failed: DB_WRITE_FAILED, step store, and stored "unknown"
// when its tokens were not revoked.
func (e *env) wantStoreFailed(t *testing.T, revoked bool) {
	t.Helper()
	for _, ev := range e.wantEvents(domain.EventTokenObtainFailed, pid, domain.OutcomeFailure, domain.ReasonDBWriteFailed) {
		d := details(t, ev)
		if unknown := d["stored"] == storedUnknown; d["step"] != stepStore || unknown == revoked {
			t.Errorf("obtain_failed details = %v, want step %q and stored %q unless revoked", d, stepStore, storedUnknown)
		}
	}
}

// errWriteDeadline is a write whose deadline passed after it was sent, as
// the repository answers it: it may have committed.
var errWriteDeadline = &apperr.Error{Kind: apperr.KindDeadlineExceeded, Reason: "DEADLINE_EXCEEDED",
	Message: "put credential: deadline exceeded", Err: context.DeadlineExceeded}

// errConnectRefused is a write that never reached the database, as the
// repository answers it: nothing was written.
var errConnectRefused = apperr.Unavailable(&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, "database unreachable")

// A token the server issued whose write failed is used by nobody: it is
// revoked at the server and audited (oauth.token.obtain_failed,
// DB_WRITE_FAILED, step store), and the caller gets the store's error. A
// write that committed though its answer was lost stored the token: it is
// served, not revoked. The grant is read back to tell (a read-back that
// fails once is tried again); when it cannot be read and the write's error
// proves nothing (a deadline after the write was sent), the token is not
// revoked: the write may have committed, and revoking would leave the
// stored grant with a dead token. A write that proves nothing was written
// (an abort by the database, a connection never made) is revoked even when
// the grant cannot be read back.
func TestMachineTokenNotStoredIsRevoked(t *testing.T) {
	for _, tc := range []struct {
		name string
		// answer is the write's answer; committed: it stored the token
		// before answer was given.
		answer    error
		committed bool
		// failedReads is how many reads after the write fail.
		failedReads int
		// served: Get serves the issued token; revoked: it is revoked.
		served, revoked bool
	}{
		{"database down", errInjected, false, 0, false, true},
		{"transaction aborted by the database", errDBAborted, false, 0, false, true},
		{"answer lost after the commit", errInjected, true, 0, true, false},
		{"deadline after the commit, one read-back failed", errWriteDeadline, true, 1, true, false},
		{"deadline after the commit, read-backs failed", errWriteDeadline, true, 99, false, false},
		{"deadline before the commit, read-backs failed", errWriteDeadline, false, 99, false, false},
		{"transaction aborted by the database, read-backs failed", errDBAborted, false, 99, false, true},
		{"database refused the connection, read-backs failed", errConnectRefused, false, 99, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, testConfig)
			hs := failWrite(e.store, tc.answer, tc.committed, tc.failedReads)
			svc := e.machineServiceOver(hs)
			e.as.addClient("cc", "secret")
			e.clientCredentialsProvider("cc", "secret")

			tok, err := svc.Get(e.ctx, domain.TenantGrant(tnt, pid))

			issued := e.wantOneIssued(t, tc.revoked)
			if tc.served {
				if err != nil || tok.AccessToken.Reveal() != issued {
					t.Fatalf("Get = %v; want the stored token served", err)
				}
				return
			}
			if apperr.KindOf(err) != apperr.KindOf(tc.answer) {
				t.Fatalf("Get = %v, want the store's error %v", err, tc.answer)
			}
			if tc.committed {
				hs.failGet = nil
				if h := e.held(tnt, pid); h.Tokens.AccessToken.Reveal() != issued {
					t.Errorf("stored %q, want the issued token", h.Tokens.AccessToken.Reveal())
				}
			}
			e.wantStoreFailed(t, tc.revoked)
		})
	}
}
