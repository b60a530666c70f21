package grants

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/vault"
)

// idpIssuer is the enterprise identity provider's issuer identifier.
const idpIssuer = "https://idp.example.com"

// fakeIdP is an enterprise identity provider: its RFC 8414 metadata names
// metaIssuer (the issuer identifier its ID tokens carry) and its token
// endpoint refuses every token exchange with invalid_grant, as a real one
// refuses an ID token it did not issue, unless grants is set: then it
// answers every exchange with an ID-JAG. It counts what it was asked.
type fakeIdP struct {
	metaIssuer string
	grants     bool

	mu        sync.Mutex
	metadata  int
	exchanges []string // subject tokens, in order
}

func (p *fakeIdP) IdentityProviderMetadata(_ context.Context, issuer string, _ *oauthclient.Trace) (*oauthclient.Metadata, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.metadata++
	if !oauthclient.SameIssuer(p.metaIssuer, issuer) {
		return nil, oauthclient.ErrIssuerMismatch
	}
	return &oauthclient.Metadata{Issuer: p.metaIssuer, TokenEndpoint: p.metaIssuer + "/token"}, nil
}

func (p *fakeIdP) ExchangeIDToken(_ context.Context, _ *oauthclient.Metadata, _ *oauthclient.Registration, idToken secret.Secret, _, _ string, _ []string) (*oauthclient.IDJAG, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.exchanges = append(p.exchanges, idToken.Reveal())
	if p.grants {
		return &oauthclient.IDJAG{Assertion: secret.New("id-jag-" + strconv.Itoa(len(p.exchanges)))}, nil
	}
	return nil, &oauthclient.OAuthError{Op: "token exchange", Status: 400, Code: "invalid_grant"}
}

// asked is how many metadata reads and token exchanges the IdP received.
func (p *fakeIdP) asked() (metadata, exchanges int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.metadata, len(p.exchanges)
}

// countingDiscovery is fakeDiscovery counting the MCP server probes and
// authorization server discoveries.
type countingDiscovery struct {
	fakeDiscovery
	mu     sync.Mutex
	probes int
}

func (c *countingDiscovery) Probe(ctx context.Context, u string, h map[string]string, tr *oauthclient.Trace) (*oauthclient.ProbeResult, error) {
	c.mu.Lock()
	c.probes++
	c.mu.Unlock()
	return c.fakeDiscovery.Probe(ctx, u, h, tr)
}

func (c *countingDiscovery) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.probes
}

// enterpriseEnv is the environment with an enterprise-managed provider.
type enterpriseEnv struct {
	*env
	idp  *fakeIdP
	disc *countingDiscovery
	svc  *Service
}

// newEnterpriseEnv creates the provider with the identity provider
// configured as cfgIssuer (and, when tokenEndpoint is set, its token
// endpoint) and the IdP whose metadata names metaIssuer.
func newEnterpriseEnv(t *testing.T, scope domain.GrantScope, cfgIssuer, tokenEndpoint, metaIssuer string) *enterpriseEnv {
	t.Helper()
	e := &enterpriseEnv{env: newEnv(t, testConfig), idp: &fakeIdP{metaIssuer: metaIssuer}, disc: &countingDiscovery{}}
	e.svc = e.serviceOver(e.store)
	cfg := domain.CredentialConfig{IdP: domain.EnterpriseIdP{Issuer: cfgIssuer, TokenEndpoint: tokenEndpoint, ClientID: "mcpauth-at-idp"}}
	row := &repository.Provider{TenantID: tnt, ID: pid, DisplayName: pid, ServerIdentifier: pid, URLHash: "k1:" + pid,
		ServerURL: e.seal(tnt, pid, vault.FieldServerURL, serverURL(pid)), Scopes: "[]", KeyID: e.keys.PrimaryID(),
		CredentialKind: string(domain.KindEnterpriseManaged), CredentialConfig: vault.JSONCredentialConfig(cfg),
		ClientID: "mcpauth-at-as", ClientSecret: e.seal(tnt, pid, vault.FieldClientSecret, "as-secret"), GrantScope: scope}
	if err := e.store.CreateProvider(e.ctx, row); err != nil {
		t.Fatal(err)
	}
	return e
}

// serviceOver is the environment's service over store.
func (e *enterpriseEnv) serviceOver(store Store) *Service {
	e.tb.Helper()
	svc, err := New(Deps{Store: store, Cipher: e.keys, Proto: e.as, Locks: e.locks, Audit: e.auditor, Reads: e.reads, Log: e.log,
		Now: e.clock.Now, Config: testConfig, Metrics: metrics.New(),
		Machine: MachineDeps{Discover: e.disc, Proto: e.as, Identity: e.idp}})
	if err != nil {
		e.tb.Fatal(err)
	}
	return svc
}

// idToken is an ID token (HS256: nothing here checks its signature)
// issued by iss for sub.
func idToken(t *testing.T, iss, sub string) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte("a-client-secret-of-32-bytes-or-more")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Issuer: iss, Subject: sub, Audience: jwt.Audience{"mcpauth-at-idp"}}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (e *enterpriseEnv) exchange(user, tok string) error {
	_, err := e.svc.ExchangeIdentityAssertion(e.ctx, IdentityAssertion{Tenant: tnt, Provider: pid, User: user, IDToken: secret.New(tok)})
	return err
}

// wantIssuerRefusals checks the oauth.token.obtain_failed events: one per
// refused issuer, in order, each at the identity_binding step naming the
// issuer the token offered.
func (e *enterpriseEnv) wantIssuerRefusals(t *testing.T, issuers ...string) {
	t.Helper()
	var reasons []string
	for range issuers {
		reasons = append(reasons, domain.ReasonIDTokenIssuerMismatch)
	}
	for i, ev := range e.wantEvents(domain.EventTokenObtainFailed, pid, domain.OutcomeFailure, reasons...) {
		if d := details(t, ev); d["step"] != stepBinding || d["identity_issuer"] != issuers[i] || d["kind"] != string(domain.KindEnterpriseManaged) {
			t.Errorf("obtain_failed details = %v, want step %q, identity_issuer %q", d, stepBinding, issuers[i])
		}
	}
}

// An ID token whose iss is not exactly the configured identity provider's
// issuer is refused before anything is sent (OpenID Connect Core 1.0
// section 3.1.3.7 step 2): neither the MCP server, nor the identity
// provider, nor the authorization server is asked anything, nothing is
// stored, and the refusal is audited. On a TENANT and on a USER provider.
func TestExchangeRefusesAnotherIssuerBeforeSending(t *testing.T) {
	others := []string{
		"https://other-idp.example.com",
		"https://IDP.example.com",         // case differs
		"http://idp.example.com",          // scheme differs
		"https://idp.example.com:8443",    // port differs
		"https://idp.example.com/tenant2", // path differs
		"https://idp.example.com?x=1",
	}
	for _, scope := range []domain.GrantScope{domain.ScopeTenant, domain.ScopeUser} {
		t.Run(string(scope), func(t *testing.T) {
			e := newEnterpriseEnv(t, scope, idpIssuer, "", idpIssuer)
			for _, iss := range others {
				err := e.exchange("alice", idToken(t, iss, "alice"))
				wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonIDTokenIssuerMismatch)
				if ae, _ := apperr.As(err); ae.Metadata["step"] != stepBinding {
					t.Errorf("%s: metadata %v, want step %s", iss, ae.Metadata, stepBinding)
				}
			}
			if md, ex := e.idp.asked(); md != 0 || ex != 0 || e.disc.count() != 0 {
				t.Fatalf("refused ID tokens went out: %d IdP metadata reads, %d token exchanges, %d MCP server probes", md, ex, e.disc.count())
			}
			ref := domain.TenantGrant(tnt, pid)
			if scope == domain.ScopeUser {
				ref.User = "alice"
			}
			if _, err := e.store.GetCredential(e.ctx, ref); apperr.KindOf(err) != apperr.KindNotFound {
				t.Errorf("GetCredential after the refusals: %v, want nothing stored", err)
			}
			e.wantIssuerRefusals(t, others...)
		})
	}
}

// The issuer is compared exactly with the one the identity provider's
// metadata names, before the token exchange: configured with a trailing
// slash the metadata does not have (the one difference the metadata check
// allows), a token naming the configured form is refused after the
// metadata was read, without a token exchange; the metadata's form goes
// on to the exchange.
func TestExchangeComparesTheDiscoveredIssuerExactly(t *testing.T) {
	e := newEnterpriseEnv(t, domain.ScopeTenant, idpIssuer+"/", "", idpIssuer)
	err := e.exchange("", idToken(t, idpIssuer+"/", "alice"))
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonIDTokenIssuerMismatch)
	if md, ex := e.idp.asked(); md != 1 || ex != 0 {
		t.Fatalf("IdP asked %d metadata reads, %d token exchanges; want 1, 0", md, ex)
	}
	e.wantIssuerRefusals(t, idpIssuer+"/")

	tok := idToken(t, idpIssuer, "alice")
	err = e.exchange("", tok)
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonIdentityProviderRefused)
	if _, ex := e.idp.asked(); ex != 1 || e.idp.exchanges[0] != tok {
		t.Fatalf("token exchanges = %d, want the metadata's issuer's token exchanged once", ex)
	}
}

// A token of the configured issuer goes to the identity provider; so does
// any token of a provider configured with a token endpoint and no issuer:
// there is no issuer to compare with.
func TestExchangeSendsTheIssuersToken(t *testing.T) {
	for _, c := range []struct{ name, cfgIssuer, tokenEndpoint, iss string }{
		{"configured issuer", idpIssuer, "", idpIssuer},
		{"configured issuer and token endpoint", idpIssuer, idpIssuer + "/oauth2/token", idpIssuer},
		{"token endpoint alone", "", idpIssuer + "/token", "https://whoever.example.com"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnterpriseEnv(t, domain.ScopeUser, c.cfgIssuer, c.tokenEndpoint, idpIssuer)
			err := e.exchange("alice", idToken(t, c.iss, "alice"))
			wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonIdentityProviderRefused)
			if _, ex := e.idp.asked(); ex != 1 {
				t.Fatalf("token exchanges = %d, want 1", ex)
			}
		})
	}
}

// An exchange's tokens whose write failed are revoked only when the grant,
// read back (tried twice), does not hold them or the write's error proves
// nothing was written; a deadline after the write was sent with read-backs
// that failed leaves them alone (the write may have committed) and audits
// the failure with stored "unknown". Tokens stored after all are kept.
func TestExchangeTokenNotStoredIsRevokedOnlyWhenNotWritten(t *testing.T) {
	for _, tc := range []struct {
		name        string
		answer      error
		committed   bool
		failedReads int
		// stored: the exchange succeeds; revoked: its token is revoked.
		stored, revoked bool
		// kind is the exchange's error: the store's, or for an abort the
		// retry's read (made before anything was sent: not written).
		kind apperr.Kind
	}{
		{"database down", errInjected, false, 0, false, true, apperr.KindUnavailable},
		{"deadline after the commit, one read-back failed", errWriteDeadline, true, 1, true, false, 0},
		{"deadline after the commit, read-backs failed", errWriteDeadline, true, 99, false, false, apperr.KindDeadlineExceeded},
		{"transaction aborted by the database, retry's read and read-backs failed", errDBAborted, false, 99, false, true, apperr.KindUnavailable},
		{"database refused the connection, read-backs failed", errConnectRefused, false, 99, false, true, apperr.KindUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnterpriseEnv(t, domain.ScopeTenant, idpIssuer, "", idpIssuer)
			e.idp.grants, e.as.jwtBearer = true, true
			e.as.addClient("mcpauth-at-as", "as-secret")
			e.svc = e.serviceOver(failWrite(e.store, tc.answer, tc.committed, tc.failedReads))

			err := e.exchange("", idToken(t, idpIssuer, "alice"))

			e.wantOneIssued(t, tc.revoked)
			if tc.stored {
				if err != nil {
					t.Fatalf("exchange = %v; want the stored token kept", err)
				}
				return
			}
			if apperr.KindOf(err) != tc.kind {
				t.Fatalf("exchange = %v, want %v", err, tc.kind)
			}
			e.wantStoreFailed(t, tc.revoked)
		})
	}
}
