package authflow

import (
	"context"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
)

func TestFlowKeyHidesTheHandle(t *testing.T) {
	t.Parallel()
	const h = "handle-value"
	flowK, stateK := flowKey("flow", h), flowKey("state", h)
	if flowK == stateK || !strings.HasPrefix(flowK, "flow:") || !strings.HasPrefix(stateK, "state:") || strings.Contains(flowK, h) {
		t.Fatalf("keys %q %q", flowK, stateK)
	}
	if flowKey("flow", h) != flowK || flowKey("flow", h+"x") == flowK {
		t.Fatal("keys are not a function of the handle")
	}
}

// TestFlowRecordsAreSealedToTheirKey: a record opens only under the key it
// was stored with, only once and only before it expires; the stored bytes
// reveal neither the verifier nor the state.
func TestFlowRecordsAreSealedToTheirKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	keyA, keyB := flowKey("flow", "handle-a"), flowKey("flow", "handle-b")
	record := func(expires time.Time) *flowRecord {
		return &flowRecord{Tenant: testTenant, Provider: testProvider, User: testUser, Verifier: "verifier-secret", State: "state-secret",
			Scopes: []string{"files:read"}, ExpiresAt: expires.Unix()}
	}
	cases := []struct {
		name  string
		store func(*testing.T, *env) // leaves something under keyA
	}{
		{name: "moved to another key", store: func(t *testing.T, e *env) {
			if err := e.svc.flows.put(ctx, keyB, record(t0.Add(time.Minute)), time.Minute); err != nil {
				t.Fatal(err)
			}
			raw, err := e.flows.Memory.Take(ctx, keyB)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(raw), "verifier-secret") || strings.Contains(string(raw), "state-secret") {
				t.Fatal("flow record stored in plaintext")
			}
			if err := e.flows.Memory.Put(ctx, keyA, raw, time.Minute); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "not a ciphertext", store: func(t *testing.T, e *env) {
			if err := e.flows.Memory.Put(ctx, keyA, []byte("garbage"), time.Minute); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "not a record", store: func(t *testing.T, e *env) {
			ct, err := e.keys.Seal(keyring.Scope{Tenant: flowTenant, Provider: keyA, Field: "flow"}, []byte("not json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := e.flows.Memory.Put(ctx, keyA, ct, time.Minute); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "expired", store: func(t *testing.T, e *env) {
			if err := e.svc.flows.put(ctx, keyA, record(t0.Add(-time.Second)), time.Minute); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "absent", store: func(*testing.T, *env) {}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			tc.store(t, e)
			_, err := e.svc.flows.take(ctx, keyA, t0)
			wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonFlowExpiredOrUsed)
		})
	}
	t.Run("round trip, once", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		want := record(t0.Add(time.Minute))
		if err := e.svc.flows.put(ctx, keyA, want, time.Minute); err != nil {
			t.Fatal(err)
		}
		got, err := e.svc.flows.take(ctx, keyA, t0.Add(time.Minute))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("take = %+v, %v; want %+v", got, err, want)
		}
		_, err = e.svc.flows.take(ctx, keyA, t0)
		wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonFlowExpiredOrUsed)
	})
}

func TestCallbackRefusesUnknownRegistrationMethod(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newProviderEnv(t, providerSpec{})
	f := e.authorize(t, startIn())
	key := flowKey("state", f.auth.State)
	rec, err := e.svc.flows.take(ctx, key, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	rec.RegMethod = "magic"
	if err := e.svc.flows.put(ctx, key, rec, time.Minute); err != nil {
		t.Fatal(err)
	}
	if res := e.svc.Callback(ctx, f.callback()); res.Reason != domain.ReasonClientChanged || e.as.counts().exchanges != 0 {
		t.Fatalf("Callback = %+v after %d token requests", res, e.as.counts().exchanges)
	}
}

func TestProbeCache(t *testing.T) {
	t.Parallel()
	row := &repository.Provider{TenantID: testTenant, ID: testProvider, Version: 1}
	res := &oauthclient.ProbeResult{Status: 401}
	var none *probeCache
	none.put(row, res, t0)
	if _, ok := none.get(row, t0); ok {
		t.Fatal("nil cache hit")
	}
	off := newProbeCache(0)
	off.put(row, res, t0)
	if _, ok := off.get(row, t0); ok || len(off.m) != 0 {
		t.Fatal("disabled cache kept a result")
	}

	c := newProbeCache(time.Minute)
	c.put(row, res, t0)
	if got, ok := c.get(row, t0.Add(59*time.Second)); !ok || got != res {
		t.Fatal("fresh result missed")
	}
	if _, ok := c.get(row, t0.Add(time.Minute)); ok {
		t.Fatal("stale result served")
	}
	if _, ok := c.get(&repository.Provider{TenantID: testTenant, ID: testProvider, Version: 2}, t0); ok {
		t.Fatal("result of another provider version served")
	}
	for i := range maxProbeEntries {
		c.put(&repository.Provider{TenantID: testTenant, ID: "p" + strconv.Itoa(i)}, res, t0)
	}
	if _, ok := c.get(row, t0); ok || len(c.m) != 1 {
		t.Fatalf("a full cache was not emptied: %d entries", len(c.m))
	}
}
