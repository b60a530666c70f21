package readlog

import (
	"context"
	"errors"
	"time"

	"github.com/mcpauth/mcpauth/repository"
)

// Lister lists stored token-read counts. *repository.Store implements it.
type Lister interface {
	ListTokenReads(ctx context.Context, tenant string, f repository.TokenReadsFilter, after repository.TokenReadsCursor, limit int) ([]repository.TokenReads, error)
}

var _ Lister = (*repository.Store)(nil)

// Reads is how many access tokens of one provider one caller read during
// one minute, as stored (the last flush interval may not be in yet).
type Reads struct {
	Provider string
	Actor    string
	// Minute is the start of the minute (UTC).
	Minute      time.Time
	Count       int64
	First, Last time.Time
}

// Cursor is where a listing continues: the last Reads of the previous page.
type Cursor struct {
	Minute   time.Time
	Provider string
	Actor    string
}

// Log lists a tenant's token-read counts.
type Log struct {
	store Lister
}

// NewLog returns the token-read query use case over store.
func NewLog(store Lister) (*Log, error) {
	if store == nil {
		return nil, errors.New("readlog: store is required")
	}
	return &Log{store: store}, nil
}

// List returns up to limit of the tenant's counts (of provider, when not
// empty) after cursor, newest minute first.
func (l *Log) List(ctx context.Context, tenant, provider string, after Cursor, limit int) ([]Reads, error) {
	var c repository.TokenReadsCursor
	if !after.Minute.IsZero() {
		c = repository.TokenReadsCursor{Minute: after.Minute.Unix(), ProviderID: after.Provider, Actor: after.Actor}
	}
	rows, err := l.store.ListTokenReads(ctx, tenant, repository.TokenReadsFilter{ProviderID: provider}, c, limit)
	if err != nil {
		return nil, err
	}
	out := make([]Reads, len(rows))
	for i, r := range rows {
		out[i] = Reads{Provider: r.ProviderID, Actor: r.Actor, Minute: time.Unix(r.Minute, 0).UTC(), Count: r.Reads,
			First: time.UnixMilli(r.FirstMs).UTC(), Last: time.UnixMilli(r.LastMs).UTC()}
	}
	return out, nil
}
