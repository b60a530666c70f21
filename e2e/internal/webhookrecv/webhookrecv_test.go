package webhookrecv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/webhook"
)

func newSecret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "whsec_" + base64.StdEncoding.EncodeToString(b)
}

// TestReceiver posts messages with mcpauth's own sender (signed by the
// Standard Webhooks library) and checks what the receiver makes of them:
// signed under its secret it verifies, under another secret, before any
// secret, or with a stale timestamp it does not, and GET /received lists
// every message in order with its body. The secret never reaches the log.
func TestReceiver(t *testing.T) {
	t.Parallel()
	var log lockedBuffer
	r := New(&log)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	sender, err := webhook.NewSender(srv.Client(), time.Second, "test")
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"type":"oauth.reauth_required","timestamp":"2026-01-01T00:00:00Z","data":{"name":"tenants/acme/auditEvents/01"}}`)
	send := func(id string, ts time.Time, secrets ...string) int {
		t.Helper()
		var ss []secret.Secret
		for _, s := range secrets {
			ss = append(ss, secret.New(s))
		}
		code, _ := sender.Send(context.Background(), srv.URL+"/webhook", id, ts, body, ss)
		return code
	}
	post := func(path, body string) int {
		t.Helper()
		resp, err := http.Post(srv.URL+path, "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	good, other := newSecret(t), newSecret(t)
	if code := send("before-secret", time.Now(), good); code != http.StatusUnauthorized {
		t.Errorf("a message before the secret was set: %d, want 401", code)
	}
	if code := post("/secret", "not-a-secret"); code != http.StatusBadRequest {
		t.Errorf("POST /secret with a malformed secret: %d, want 400", code)
	}
	if code := post("/secret", good+"\n"); code != http.StatusOK {
		t.Fatalf("POST /secret: %d", code)
	}
	for _, c := range []struct {
		id      string
		ts      time.Time
		secrets []string
		want    int
	}{
		{"signed", time.Now(), []string{good}, http.StatusNoContent},
		{"rotating", time.Now(), []string{other, good}, http.StatusNoContent},
		{"other-secret", time.Now(), []string{other}, http.StatusUnauthorized},
		{"stale", time.Now().Add(-2 * Tolerance), []string{good}, http.StatusUnauthorized},
	} {
		if code := send(c.id, c.ts, c.secrets...); code != c.want {
			t.Errorf("message %s: %d, want %d", c.id, code, c.want)
		}
	}
	// A body changed after signing does not verify.
	now := time.Now()
	sig, err := webhook.Sign(webhook.Message{ID: "tampered", Timestamp: now, Body: body, Secrets: []secret.Secret{secret.New(good)}})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/webhook", bytes.NewReader(append(body[:len(body):len(body)], ' ')))
	req.Header.Set("webhook-id", "tampered")
	req.Header.Set("webhook-timestamp", strconv.FormatInt(now.Unix(), 10))
	req.Header.Set("webhook-signature", sig)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a tampered body: %d, want 401", resp.StatusCode)
	}

	resp, err = http.Get(srv.URL + "/received")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []Message
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"before-secret": false, "signed": true, "rotating": true, "other-secret": false, "stale": false, "tampered": false}
	if len(got) != len(want) {
		t.Fatalf("GET /received listed %d messages, want %d: %+v", len(got), len(want), got)
	}
	for i, id := range []string{"before-secret", "signed", "rotating", "other-secret", "stale", "tampered"} {
		m := got[i]
		if m.ID != id || m.Verified != want[id] || m.Type != "oauth.reauth_required" || (m.Error == "") != want[id] {
			t.Errorf("message %d = %+v, want id %s verified %v", i, m, id, want[id])
		}
		if id != "tampered" && !bytes.Equal(m.Body, body) {
			t.Errorf("message %s body %s, want %s", id, m.Body, body)
		}
	}
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) != 7 || lines[2] != "webhook signed oauth.reauth_required: signature verified" ||
		!strings.HasPrefix(lines[4], "webhook other-secret oauth.reauth_required: signature INVALID") {
		t.Errorf("log:\n%s", log.String())
	}
	if strings.Contains(log.String(), strings.TrimPrefix(good, "whsec_")) {
		t.Error("the log shows the secret")
	}
}

// lockedBuffer is a log written by the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
