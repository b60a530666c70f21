package servicetest

import (
	"context"
	"sync"

	"github.com/mcpauth/mcpauth/caller"
)

// Reads counts token reads in memory per (tenant, provider, caller), as
// readlog.Aggregator does before its counts are stored.
type Reads struct {
	mu sync.Mutex
	m  map[[3]string]int64
}

// Record counts one read of provider in tenant by the caller in ctx.
func (r *Reads) Record(ctx context.Context, tenant, provider string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[[3]string]int64{}
	}
	r.m[[3]string{tenant, provider, caller.ActorName(ctx)}]++
}

// Count is how many reads of provider in tenant by actor were recorded.
func (r *Reads) Count(tenant, provider, actor string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m[[3]string{tenant, provider, actor}]
}

// Total is how many reads were recorded.
func (r *Reads) Total() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, c := range r.m {
		n += c
	}
	return n
}
