package authflow

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/statestore"
)

// FlowStore is the short-lived, single-use store of pending authorization
// flows (Redis in production). statestore.Store implements it.
type FlowStore interface {
	Put(ctx context.Context, key string, value []byte, ttl time.Duration) error
	Take(ctx context.Context, key string) ([]byte, error)
	// Get reads without consuming: a callback checks its browser binding
	// on a read, so that a request from another browser cannot burn the
	// flow of the browser that started it.
	Get(ctx context.Context, key string) ([]byte, error)
	// Claim and Settle consume a flow retry-safely: the callback claims
	// with a token only its browser can present again, so a reload after
	// a stalled store gets the flow back, and settles the claim (once,
	// exclusively) before the code goes anywhere.
	Claim(ctx context.Context, key, token string, ttl time.Duration) ([]byte, error)
	Settle(ctx context.Context, key, token string) error
}

// flowTenant is the encryption scope tenant of flow records. It is not a
// valid tenant id, so it can never collide with a real tenant's keys.
const flowTenant = "_flows"

// flowRecord is what a pending flow remembers. It never holds a client
// secret or token: those stay in the database. Short JSON names keep a
// record well under 1 KiB in Redis.
type flowRecord struct {
	Tenant   string `json:"t"`
	Provider string `json:"p"`
	// User is the person the flow was started for.
	User string `json:"u"`
	// GrantUser is the user whose connection the flow completes (User,
	// for a USER provider), empty for the provider's tenant-wide grant.
	GrantUser     string                    `json:"gu,omitempty"`
	Issuer        string                    `json:"i"`
	IssSupported  bool                      `json:"is,omitempty"`
	AuthEndpoint  string                    `json:"ae"`
	TokenEndpoint string                    `json:"te"`
	RevocationURL string                    `json:"rv,omitempty"`
	ClientID      string                    `json:"c"`
	RegMethod     domain.RegistrationMethod `json:"rm"`
	AuthMethod    string                    `json:"am,omitempty"`
	RedirectURI   string                    `json:"r"`
	Resource      string                    `json:"rs,omitempty"`
	Scopes        []string                  `json:"s,omitempty"`
	Verifier      string                    `json:"v"`
	State         string                    `json:"st"`
	ReturnURL     string                    `json:"ru,omitempty"`
	URLHash       string                    `json:"uh"`
	Browser       string                    `json:"b,omitempty"`
	ExpiresAt     int64                     `json:"x"`
	Extra         map[string]string         `json:"e,omitempty"`
	PKCEException bool                      `json:"px,omitempty"`
	// DPoPJKT is the thumbprint of the DPoP key the code exchange must use
	// (chosen at start from the provider's mode and the metadata); "" for
	// Bearer tokens.
	DPoPJKT string `json:"dj,omitempty"`
	// RestartUntil (Unix seconds) is how long the browser that opened the
	// flow may start it again from the page of a lost flow (restart.go);
	// a restarted flow keeps its first flow's.
	RestartUntil int64 `json:"xr,omitempty"`
	// AddScopes are the caller's additional scopes, for a restart.
	AddScopes []string `json:"as,omitempty"`
	// RequireCompletion parks the grant for CompleteAuthorization instead
	// of storing it (completion.go).
	RequireCompletion bool `json:"rc,omitempty"`
	// ExpectedSubject, when set, must be the sub of the ID token the code
	// exchange returns (completion.go).
	ExpectedSubject string `json:"es,omitempty"`
	// StartedBy and StartRequest name the caller that started the flow and
	// its request id. Every callback event carries them, so a used flow's
	// start is on record even if its own event (written without waiting,
	// audit.Auditor.RecordAsync) was lost to a crash.
	StartedBy    string `json:"sb,omitempty"`
	StartRequest string `json:"sr,omitempty"`
}

// event is an audit event of the flow's callback: by the person in the
// browser, about the flow's grant, naming who started the flow.
func (r *flowRecord) event(typ domain.EventType, outcome domain.Outcome, reason string, details map[string]string) audit.Event {
	if r.StartedBy != "" || r.StartRequest != "" {
		if details == nil {
			details = make(map[string]string, 2)
		}
		details["started_by"] = r.StartedBy
		if r.StartRequest != "" {
			details["start_request_id"] = r.StartRequest
		}
	}
	return audit.Event{Tenant: r.Tenant, Type: typ, Provider: r.Provider, User: r.GrantUser, Actor: "user:" + r.User,
		Outcome: outcome, Reason: reason, Details: details}
}

// grant names the grant the flow completes: the provider's tenant-wide
// grant, or the connection of GrantUser.
func (r *flowRecord) grant() domain.GrantRef {
	return domain.GrantRef{Tenant: r.Tenant, Provider: r.Provider, User: r.GrantUser}
}

// flowKey derives the store key from a flow handle or state: a hash, so the
// raw value never appears in Redis and a key dump cannot be replayed.
func flowKey(kind, handle string) string {
	h := sha256.Sum256([]byte("mcpauth/v1/" + kind + "\x00" + handle))
	return kind + ":" + base64.RawURLEncoding.EncodeToString(h[:])
}

// flowCodec seals flow records bound to their store key.
type flowCodec struct {
	cipher vault.Cipher
	store  FlowStore
}

func (c flowCodec) put(ctx context.Context, key string, r *flowRecord, ttl time.Duration) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return apperr.Internal(err, "encoding flow")
	}
	ct, err := c.cipher.Seal(keyring.Scope{Tenant: flowTenant, Provider: key, Field: "flow"}, raw)
	if err != nil {
		return apperr.Internal(err, "sealing flow")
	}
	if err := c.store.Put(ctx, key, ct, ttl); err != nil {
		return storeErr(err)
	}
	return nil
}

// take consumes the record atomically; errFlowGone when absent or expired.
func (c flowCodec) take(ctx context.Context, key string, now time.Time) (*flowRecord, error) {
	ct, err := c.store.Take(ctx, key)
	if err != nil {
		return nil, flowStoreErr(err)
	}
	return c.open(key, ct, now)
}

// peek reads the record without consuming it, and returns its sealed form
// for consume.
func (c flowCodec) peek(ctx context.Context, key string, now time.Time) (*flowRecord, []byte, error) {
	ct, err := c.store.Get(ctx, key)
	if err != nil {
		return nil, nil, flowStoreErr(err)
	}
	r, err := c.open(key, ct, now)
	return r, ct, err
}

// claim consumes the record for the holder of token, who gets it again
// from a later request until settle (see FlowStore.Claim), and returns
// it with its sealed form.
func (c flowCodec) claim(ctx context.Context, key, token string, ttl time.Duration, now time.Time) (*flowRecord, []byte, error) {
	ct, err := c.store.Claim(ctx, key, token, ttl)
	if err != nil {
		return nil, nil, flowStoreErr(err)
	}
	r, err := c.open(key, ct, now)
	return r, ct, err
}

// settle ends token's claim: errFlowGone when another request settled it.
func (c flowCodec) settle(ctx context.Context, key, token string) error {
	if err := c.store.Settle(ctx, key, token); err != nil {
		return flowStoreErr(err)
	}
	return nil
}

// open decrypts and checks a sealed record; errFlowGone when it does not
// open or has expired.
func (c flowCodec) open(key string, ct []byte, now time.Time) (*flowRecord, error) {
	raw, err := c.cipher.Open(keyring.Scope{Tenant: flowTenant, Provider: key, Field: "flow"}, ct)
	if err != nil {
		return nil, errFlowGone
	}
	var r flowRecord
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, errFlowGone
	}
	if now.Unix() > r.ExpiresAt {
		return nil, errFlowGone
	}
	return &r, nil
}

// flowStoreErr maps a flow store failure: a missing record is errFlowGone.
func flowStoreErr(err error) error {
	if errors.Is(err, statestore.ErrNotFound) {
		return errFlowGone
	}
	return storeErr(err)
}

var errFlowGone = apperr.FailedPrecondition(domain.ReasonFlowExpiredOrUsed, "this authorization link has expired or was already used")

func storeErr(err error) error {
	if statestore.IsUnavailable(err) {
		return apperr.Unavailable(err, "flow state store unavailable")
	}
	return apperr.Internal(err, "flow state store")
}
