// Package webhooks is the webhook use case: a tenant's endpoints (created,
// changed, rotated and deleted through the API, their signing secrets sealed
// with the keyring) and the dispatcher that fans the event feed out to them
// and delivers each event at least once, signed, in feed order per provider,
// with exponential backoff and a dead-letter state.
package webhooks

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/validate"
)

// Store keeps endpoints and deliveries. *repository.Store implements it.
type Store interface {
	CreateWebhookEndpoint(ctx context.Context, e *repository.WebhookEndpoint, events ...*repository.AuditEvent) error
	GetWebhookEndpoint(ctx context.Context, tenant, id string) (*repository.WebhookEndpoint, error)
	ListWebhookEndpoints(ctx context.Context, tenant, afterID string, limit int) ([]repository.WebhookEndpoint, error)
	UpdateWebhookEndpoint(ctx context.Context, e *repository.WebhookEndpoint, expectedVersion int64, events ...*repository.AuditEvent) error
	DeleteWebhookEndpoint(ctx context.Context, tenant, id string, events ...*repository.AuditEvent) error
	ListWebhookDeliveries(ctx context.Context, tenant, endpointID string, state int, afterUID string, limit int) ([]repository.WebhookDelivery, error)
	DeliveryCounts(ctx context.Context, tenant, endpointID string) (map[int]int64, error)
	RedeliverWebhookEvent(ctx context.Context, tenant, endpointID, eventUID string) error
	LeaseFanOut(ctx context.Context, owner string, now time.Time, lease time.Duration, read repository.FanOutRead, after *repository.FanOutBatch) (*repository.FanOutBatch, error)
	HeldGroups(ctx context.Context, ds []repository.WebhookDelivery) (map[repository.DeliveryGroup]bool, error)
	RecordFanOut(ctx context.Context, b *repository.FanOutBatch, ds []repository.WebhookDelivery, now time.Time, lease time.Duration) error
	RenewFanOut(ctx context.Context, owner string, until time.Time) (bool, error)
	ReleaseFanOut(ctx context.Context, owner string) error
	ClaimDeliveries(ctx context.Context, owner string, now time.Time, lease time.Duration, limit int) ([]repository.WebhookDelivery, error)
	FinishAttempt(ctx context.Context, d *repository.WebhookDelivery) (bool, error)
	FinishDelivered(ctx context.Context, done []repository.WebhookDelivery) error
	ReleaseDeliveries(ctx context.Context, ds []repository.WebhookDelivery) error
}

var _ Store = (*repository.Store)(nil)

// Cipher seals and opens signing secrets. *keyring.Keyring implements it.
type Cipher interface {
	Seal(s keyring.Scope, plaintext []byte) ([]byte, error)
	Open(s keyring.Scope, ciphertext []byte) ([]byte, error)
	PrimaryID() uint32
}

// URLChecker refuses endpoint URLs the egress policy forbids, looking the
// host up now. *egress.Guard implements it.
type URLChecker interface {
	CheckResolved(ctx context.Context, rawURL string) error
}

// Sender posts one signed message and returns the HTTP status; any error is
// a failed attempt. The sender's HTTP client applies the egress policy at
// dial time.
type Sender interface {
	Send(ctx context.Context, url, id string, ts time.Time, body []byte, secrets []secret.Secret) (int, error)
}

// Clock tells the time.
type Clock func() time.Time

// fieldSecret scopes the sealed signing secret: the endpoint id takes the
// provider's place in the associated data.
const fieldSecret = "webhook_endpoint.secret"

// rotationGrace is how long the previous secret still signs after a
// rotation, so receivers can switch without dropping messages.
const rotationGrace = 24 * time.Hour

// maxEventTypes bounds an endpoint's event type filter.
const maxEventTypes = 32

// Endpoint is an endpoint as callers see it: never its secret.
type Endpoint struct {
	Tenant     string
	ID         string
	URL        string
	EventTypes []string
	Disabled   bool
	Version    int64
	CreateTime time.Time
	UpdateTime time.Time
	// Pending, Delivered and Dead count its deliveries by state.
	Pending, Delivered, Dead int64
}

// Delivery is one event's delivery to an endpoint.
type Delivery struct {
	ID            int64
	EventUID      string
	EventType     string
	Provider      string
	State         int
	Attempts      int
	NextAttemptAt time.Time
	LastStatus    int
	LastError     string
	CreateTime    time.Time
	UpdateTime    time.Time
}

// Service manages endpoints.
type Service struct {
	store  Store
	cipher Cipher
	check  URLChecker
	now    Clock
}

// New returns the endpoint use case.
func New(store Store, cipher Cipher, check URLChecker, now Clock) (*Service, error) {
	if store == nil || cipher == nil || check == nil {
		return nil, errors.New("webhooks: store, cipher and URL checker are required")
	}
	if now == nil {
		now = time.Now
	}
	return &Service{store: store, cipher: cipher, check: check, now: now}, nil
}

// newSecret returns a fresh signing secret in the specification's form:
// "whsec_" and the base64 of 32 random bytes.
func newSecret() secret.Secret {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return secret.New("whsec_" + base64.StdEncoding.EncodeToString(b))
}

func scope(tenant, id string) keyring.Scope {
	return keyring.Scope{Tenant: tenant, Provider: id, Field: fieldSecret}
}

// checkURL validates the URL of the tenant's endpoint id: well formed, and
// allowed by the egress policy (https, not a private address, also after a
// DNS look-up now). The egress guard's hook logs and audits a refusal for
// the tenant, naming the endpoint and its masked URL. The refusal's message
// quotes the guard's error, so that the caller sees why; it carries no
// cause besides, which would only say the same again in the log.
func (s *Service) checkURL(ctx context.Context, tenant, id, raw string) (string, error) {
	u, err := validate.ServerURL("webhook_endpoint.url", raw)
	if err != nil {
		return "", err
	}
	ctx = audit.WithWebhookScope(ctx, tenant, id, validate.MaskURL(u))
	if err := s.check.CheckResolved(ctx, u.String()); err != nil {
		return "", &apperr.Error{Kind: apperr.KindInvalidArgument, Reason: domain.ReasonEgressBlocked, Field: "webhook_endpoint.url",
			Message: "is refused by the egress policy: " + err.Error()}
	}
	return u.String(), nil
}

func checkTypes(types []string) ([]string, error) {
	if len(types) > maxEventTypes {
		return nil, apperr.Invalid("webhook_endpoint.event_types", "must list at most %d types", maxEventTypes)
	}
	out := make([]string, 0, len(types))
	for _, t := range types {
		if !slices.Contains(domain.EventTypes, domain.EventType(t)) {
			return nil, apperr.Invalid("webhook_endpoint.event_types", "names an unknown event type")
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

// Create adds an endpoint and returns it with its signing secret, shown
// this once.
func (s *Service) Create(ctx context.Context, tenant, id, rawURL string, types []string) (*Endpoint, secret.Secret, error) {
	if err := validate.ResourceID("webhook_endpoint_id", id); err != nil {
		return nil, secret.Secret{}, err
	}
	types, err := checkTypes(types)
	if err != nil {
		return nil, secret.Secret{}, err
	}
	u, err := s.checkURL(ctx, tenant, id, rawURL)
	if err != nil {
		return nil, secret.Secret{}, err
	}
	sec := newSecret()
	ct, err := s.cipher.Seal(scope(tenant, id), []byte(sec.Reveal()))
	if err != nil {
		return nil, secret.Secret{}, apperr.Internal(err, "seal webhook secret")
	}
	row := &repository.WebhookEndpoint{TenantID: tenant, ID: id, URL: u, EventTypes: strings.Join(types, ","), Secret: ct,
		KeyID: s.cipher.PrimaryID()}
	ev := audit.Rows(ctx, s.now(), audit.Event{Tenant: tenant, Type: domain.EventWebhookChanged, Outcome: domain.OutcomeSuccess,
		Details: map[string]string{"endpoint": id, "change": "created"}})
	if err := s.store.CreateWebhookEndpoint(ctx, row, ev...); err != nil {
		return nil, secret.Secret{}, err
	}
	return view(row, nil), sec, nil
}

func view(r *repository.WebhookEndpoint, counts map[int]int64) *Endpoint {
	e := &Endpoint{Tenant: r.TenantID, ID: r.ID, URL: r.URL, Disabled: r.Disabled, Version: r.Version,
		CreateTime: r.CreatedAt, UpdateTime: r.UpdatedAt}
	if r.EventTypes != "" {
		e.EventTypes = strings.Split(r.EventTypes, ",")
	}
	if counts != nil {
		e.Pending, e.Delivered, e.Dead = counts[repository.DeliveryPending], counts[repository.DeliveryDelivered], counts[repository.DeliveryDead]
	}
	return e
}

// Get returns the endpoint with its delivery counts.
func (s *Service) Get(ctx context.Context, tenant, id string) (*Endpoint, error) {
	r, err := s.store.GetWebhookEndpoint(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	counts, err := s.store.DeliveryCounts(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	return view(r, counts), nil
}

// List pages through the tenant's endpoints by id.
func (s *Service) List(ctx context.Context, tenant, afterID string, limit int) ([]*Endpoint, error) {
	rows, err := s.store.ListWebhookEndpoints(ctx, tenant, afterID, limit)
	if err != nil {
		return nil, err
	}
	out := make([]*Endpoint, len(rows))
	for i := range rows {
		out[i] = view(&rows[i], nil)
	}
	return out, nil
}

// Patch is an update: nil fields are kept.
type Patch struct {
	URL        *string
	EventTypes *[]string
	Disabled   *bool
}

// Update changes the endpoint's URL, event types or disabled flag.
func (s *Service) Update(ctx context.Context, tenant, id string, p Patch) (*Endpoint, error) {
	r, err := s.store.GetWebhookEndpoint(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	var fields []string
	if p.URL != nil {
		if r.URL, err = s.checkURL(ctx, tenant, id, *p.URL); err != nil {
			return nil, err
		}
		fields = append(fields, "url")
	}
	if p.EventTypes != nil {
		types, err := checkTypes(*p.EventTypes)
		if err != nil {
			return nil, err
		}
		r.EventTypes = strings.Join(types, ",")
		fields = append(fields, "event_types")
	}
	if p.Disabled != nil {
		r.Disabled = *p.Disabled
		fields = append(fields, "disabled")
	}
	ev := audit.Rows(ctx, s.now(), audit.Event{Tenant: tenant, Type: domain.EventWebhookChanged, Outcome: domain.OutcomeSuccess,
		Details: map[string]string{"endpoint": id, "change": "updated", "fields": strings.Join(fields, ",")}})
	if err := s.store.UpdateWebhookEndpoint(ctx, r, r.Version, ev...); err != nil {
		return nil, err
	}
	return view(r, nil), nil
}

// Delete removes the endpoint and its deliveries.
func (s *Service) Delete(ctx context.Context, tenant, id string) error {
	ev := audit.Rows(ctx, s.now(), audit.Event{Tenant: tenant, Type: domain.EventWebhookChanged, Outcome: domain.OutcomeSuccess,
		Details: map[string]string{"endpoint": id, "change": "deleted"}})
	return s.store.DeleteWebhookEndpoint(ctx, tenant, id, ev...)
}

// RotateSecret gives the endpoint a new signing secret, returned this once.
// The previous one still signs (a second signature) for 24 hours.
func (s *Service) RotateSecret(ctx context.Context, tenant, id string) (secret.Secret, error) {
	r, err := s.store.GetWebhookEndpoint(ctx, tenant, id)
	if err != nil {
		return secret.Secret{}, err
	}
	old, err := s.cipher.Open(scope(tenant, id), r.Secret)
	if err != nil {
		return secret.Secret{}, apperr.Internal(err, "open webhook secret")
	}
	sec := newSecret()
	if r.Secret, err = s.cipher.Seal(scope(tenant, id), []byte(sec.Reveal())); err != nil {
		return secret.Secret{}, apperr.Internal(err, "seal webhook secret")
	}
	if r.PreviousSecret, err = s.cipher.Seal(scope(tenant, id), old); err != nil {
		return secret.Secret{}, apperr.Internal(err, "seal webhook secret")
	}
	until := s.now().UTC().Add(rotationGrace)
	r.PreviousUntil, r.KeyID = &until, s.cipher.PrimaryID()
	ev := audit.Rows(ctx, s.now(), audit.Event{Tenant: tenant, Type: domain.EventWebhookChanged, Outcome: domain.OutcomeSuccess,
		Details: map[string]string{"endpoint": id, "change": "secret_rotated"}})
	if err := s.store.UpdateWebhookEndpoint(ctx, r, r.Version, ev...); err != nil {
		return secret.Secret{}, err
	}
	return sec, nil
}

// ListDeliveries pages through the endpoint's deliveries, newest first,
// optionally in one state (state < 0: any).
func (s *Service) ListDeliveries(ctx context.Context, tenant, endpointID string, state int, afterUID string, limit int) ([]Delivery, error) {
	if _, err := s.store.GetWebhookEndpoint(ctx, tenant, endpointID); err != nil {
		return nil, err
	}
	rows, err := s.store.ListWebhookDeliveries(ctx, tenant, endpointID, state, afterUID, limit)
	if err != nil {
		return nil, err
	}
	out := make([]Delivery, len(rows))
	for i, r := range rows {
		out[i] = Delivery{ID: r.ID, EventUID: r.EventUID, EventType: r.EventType, Provider: r.ProviderID, State: r.State,
			Attempts: r.Attempts, NextAttemptAt: r.NextAttemptAt, LastStatus: r.LastStatus, LastError: r.LastError,
			CreateTime: r.CreatedAt, UpdateTime: r.UpdatedAt}
	}
	return out, nil
}

// Redeliver queues the event's delivery to the endpoint again (a dead one
// included), due now.
func (s *Service) Redeliver(ctx context.Context, tenant, endpointID, eventUID string) error {
	return s.store.RedeliverWebhookEvent(ctx, tenant, endpointID, eventUID)
}

// errNoSecret is logged when an endpoint's secret cannot be opened.
var errNoSecret = errors.New("webhooks: the endpoint's secret cannot be opened")

// secrets opens the endpoint's signing secrets: the current one, and the
// previous one during its grace period.
func secrets(c Cipher, r *repository.WebhookEndpoint, now time.Time) ([]secret.Secret, error) {
	cur, err := c.Open(scope(r.TenantID, r.ID), r.Secret)
	if err != nil {
		return nil, errNoSecret
	}
	out := []secret.Secret{secret.New(string(cur))}
	if len(r.PreviousSecret) > 0 && r.PreviousUntil != nil && now.Before(*r.PreviousUntil) {
		if prev, err := c.Open(scope(r.TenantID, r.ID), r.PreviousSecret); err == nil {
			out = append(out, secret.New(string(prev)))
		}
	}
	return out, nil
}
