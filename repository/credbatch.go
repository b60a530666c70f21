package repository

import (
	"context"
	"strings"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/internal/batch"
)

// CredentialBatcher reads grants for concurrent callers in shared queries:
// while a read is in flight, the grants asked for meanwhile queue, and the
// next read fetches up to MaxBatch of them with one statement
// (WHERE (tenant_id, provider_id, user_id) IN (...)). A lone caller is read
// at once with the single-row query, so batching adds no wait when the
// database keeps up; under load (GetAccessToken for random users among many
// connections, where every call misses the token cache) one round trip and
// one statement serve many callers instead of one each.
//
// A batched read is as fresh as a direct one: it starts after every request
// it answers was queued. Each requested grant is matched on all three key
// columns, the tenant first, so a batch spanning tenants answers each
// caller with its own tenant's row only.
type CredentialBatcher struct {
	store  *Store
	runner *batch.Runner[*credRequest]
}

type credRequest struct {
	ctx  context.Context
	ref  domain.GrantRef
	done chan struct{}
	cred *Credential
	err  error
}

// Batch limits: a batch's statement has 3 parameters per grant, far below
// SQLite's and PostgreSQL's parameter limits.
const (
	credBatchMax      = 64
	credBatchInFlight = 2
	// credBatchTimeout bounds one shared read; it does not end with any one
	// caller's context, which the others did not choose.
	credBatchTimeout = 10 * time.Second
)

// NewCredentialBatcher returns a batcher reading from s.
func (s *Store) NewCredentialBatcher() *CredentialBatcher {
	b := &CredentialBatcher{store: s}
	b.runner = &batch.Runner[*credRequest]{Max: credBatchMax, InFlight: credBatchInFlight, Run: b.read}
	return b
}

// GetCredential is Store.GetCredential, read alone or in a batch.
func (b *CredentialBatcher) GetCredential(ctx context.Context, ref domain.GrantRef) (*Credential, error) {
	if err := checkTenant(ref.Tenant); err != nil {
		return nil, err
	}
	r := &credRequest{ctx: ctx, ref: ref, done: make(chan struct{})}
	b.runner.Add(r)
	select {
	case <-r.done:
		return r.cred, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// read answers reqs with one statement.
func (b *CredentialBatcher) read(reqs []*credRequest) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(reqs[0].ctx), credBatchTimeout)
	defer cancel()
	if len(reqs) == 1 {
		r := reqs[0]
		r.cred, r.err = b.store.GetCredential(ctx, r.ref)
		close(r.done)
		return
	}
	rows, err := b.store.getCredentials(ctx, reqs)
	for _, r := range reqs {
		switch c, ok := rows[r.ref]; {
		case err != nil:
			r.err = err
		case !ok:
			r.err = apperr.NotFound("credential")
		default:
			// Each caller owns its row (callers may modify what they get).
			cp := *c
			cp.Tokens = append([]byte(nil), c.Tokens...)
			r.cred = &cp
		}
		close(r.done)
	}
}

// getCredentials reads the grants of reqs with one statement.
func (s *Store) getCredentials(ctx context.Context, reqs []*credRequest) (map[domain.GrantRef]*Credential, error) {
	var q strings.Builder
	q.WriteString(`SELECT ` + strings.Join(credentialColumns, ", ") + ` FROM credentials WHERE (tenant_id, provider_id, user_id) IN (`)
	args := make([]any, 0, 3*len(reqs))
	for i, r := range reqs {
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString("(?, ?, ?)")
		args = append(args, r.ref.Tenant, r.ref.Provider, r.ref.User)
	}
	q.WriteString(")")
	text := newHotSQL(q.String()).render(s)
	db, err := s.db.DB()
	if err != nil {
		return nil, dbErr(err, "get credentials")
	}
	ctx, span := s.hotSpan(ctx, "credentials", text)
	out := make(map[domain.GrantRef]*Credential, len(reqs))
	err = func() error {
		rows, err := db.QueryContext(ctx, text, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			c := new(Credential)
			if err := rows.Scan(credentialDest(c)...); err != nil {
				return err
			}
			out[c.Ref()] = c
		}
		return rows.Err()
	}()
	if err != nil {
		err = dbErr(err, "get credentials")
	}
	span.end(err, len(out))
	return out, err
}
