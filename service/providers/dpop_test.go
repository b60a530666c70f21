package providers

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/service/vault"
)

// TestDPoPKeyLifecycle: a DPoP mode generates a key sealed with the
// provider's secrets; rotating or deleting it is audited with the public
// thumbprint only; a rotation drops the tokens bound to the old key; the
// private key appears in no view and no audit row.
func TestDPoPKeyLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	f := linear()
	f.DPoP = DPoPInput{Mode: domain.DPoPAuto}
	v := e.create(t, "acme", "p", f)
	if v.DPoP == nil || v.DPoP.Mode != domain.DPoPAuto || v.DPoP.Algorithm != "ES256" || v.DPoP.Thumbprint == "" {
		t.Fatalf("view %+v", v.DPoP)
	}
	jkt := v.DPoP.Thumbprint
	d, err := vault.OpenProvider(e.keys, e.row(t, "acme", "p"))
	if err != nil {
		t.Fatal(err)
	}
	if d.DPoP == nil || d.DPoP.Thumbprint() != jkt {
		t.Fatalf("sealed key %v, want thumbprint %s", d.DPoP, jkt)
	}
	pem := d.DPoP.PEM().Reveal()
	if strings.Contains(string(e.row(t, "acme", "p").CredentialSecrets), "PRIVATE KEY") {
		t.Fatal("the key is stored in clear")
	}

	// Same mode again: the key stays.
	upd := func(in DPoPInput) *View {
		t.Helper()
		v, err := e.svc.Update(ctx, UpdateInput{Tenant: "acme", ID: "p", Fields: Fields{DPoP: in}, Paths: []string{PathDPoP}})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := upd(DPoPInput{Mode: domain.DPoPRequired}); v.DPoP.Thumbprint != jkt || v.DPoP.Mode != domain.DPoPRequired {
		t.Fatalf("mode change rotated the key: %+v", v.DPoP)
	}
	e.authorize(t, "acme", "p")
	v = upd(DPoPInput{Mode: domain.DPoPRequired, RotateKey: true})
	if v.DPoP.Thumbprint == jkt || v.DPoP.Thumbprint == "" {
		t.Fatalf("rotation kept the key: %+v", v.DPoP)
	}
	if grant, _, _ := e.held("acme", "p"); grant {
		t.Error("tokens bound to the old key survived the rotation")
	}
	if len(e.eventsOf(domain.EventCredentialsReset)) != 1 {
		t.Error("the reset was not audited")
	}
	v = upd(DPoPInput{Mode: domain.DPoPRequired, Algorithm: "RS256"})
	if v.DPoP.Algorithm != "RS256" {
		t.Fatalf("algorithm change: %+v", v.DPoP)
	}
	if v = upd(DPoPInput{Mode: domain.DPoPDisabled}); v.DPoP != nil {
		t.Fatalf("disabled view %+v", v.DPoP)
	}
	if d, _ := vault.OpenProvider(e.keys, e.row(t, "acme", "p")); d.DPoP != nil {
		t.Fatal("the key survived DISABLED")
	}
	var changes []string
	for _, ev := range e.eventsOf(domain.EventDPoPKeyChanged) {
		var det map[string]string
		_ = json.Unmarshal([]byte(ev.Details), &det)
		changes = append(changes, det["change"])
		if det["change"] != "deleted" && (det["jkt"] == "" || det["algorithm"] == "") {
			t.Errorf("event details %v", det)
		}
	}
	if strings.Join(changes, ",") != "created,rotated,rotated,deleted" {
		t.Errorf("key events %v", changes)
	}
	for _, ev := range e.store.Events() {
		if strings.Contains(ev.Details, "PRIVATE KEY") || strings.Contains(ev.Details, pem[30:70]) {
			t.Errorf("audit row %s holds the private key", ev.EventType)
		}
	}
}

// TestDPoPInputRefused: bad DPoP settings are INVALID_ARGUMENT naming the
// field, and nothing is stored.
func TestDPoPInputRefused(t *testing.T) {
	t.Parallel()
	for name, in := range map[string]DPoPInput{
		"unknown mode":          {Mode: "sometimes"},
		"unknown algorithm":     {Mode: domain.DPoPAuto, Algorithm: "HS256"},
		"rotate while disabled": {RotateKey: true},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			f := linear()
			f.DPoP = in
			_, err := e.svc.Create(context.Background(), CreateInput{Tenant: "acme", ID: "p", Fields: f})
			if apperr.KindOf(err) != apperr.KindInvalidArgument {
				t.Fatalf("err = %v", err)
			}
			if e, ok := apperr.As(err); !ok || !strings.HasPrefix(e.Field, "provider.dpop") {
				t.Errorf("field of %v", err)
			}
			if _, err := e.store.GetProvider(context.Background(), "acme", "p"); apperr.KindOf(err) != apperr.KindNotFound {
				t.Fatal("a refused create stored the provider")
			}
		})
	}
}
