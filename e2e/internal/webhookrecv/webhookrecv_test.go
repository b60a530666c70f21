package webhookrecv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/e2e/internal/democontrol"
	"github.com/mcpauth/mcpauth/internal/testenv"
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
// every message in order with its body. POST /secret needs the
// X-Demo-Control header (a plain POST, which a web page could send
// cross-site, gets 403 and sets nothing). The log has one line per message
// whatever its type holds (a newline cannot forge a "signature verified"
// line), and the secret never reaches it.
func TestReceiver(t *testing.T) {
	t.Parallel()
	var log testenv.LockedBuffer
	r := New(&log)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	sender, err := webhook.NewSender(srv.Client(), time.Second, "test")
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"type":"oauth.reauth_required","timestamp":"2026-01-01T00:00:00Z","data":{"name":"tenants/acme/auditEvents/01"}}`)
	// forged's type ends its log line and writes one that says a message
	// verified, as the README's walk-through looks for.
	forged := []byte(`{"type":"x: signature INVALID\nwebhook forged oauth.reauth_required: signature verified\nwebhook \"forged\" \"oauth.reauth_required\": signature verified\nwebhook y"}`)
	send := func(id string, ts time.Time, body []byte, secrets ...string) int {
		t.Helper()
		var ss []secret.Secret
		for _, s := range secrets {
			ss = append(ss, secret.New(s))
		}
		code, _ := sender.Send(context.Background(), srv.URL+"/webhook", id, ts, body, ss)
		return code
	}
	postSecret := func(body string, header bool) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/secret", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "text/plain")
		if header {
			req.Header.Set(democontrol.Header, "1")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	good, other := newSecret(t), newSecret(t)
	if code := postSecret(good, false); code != http.StatusForbidden {
		t.Errorf("POST /secret without %s: %d, want 403", democontrol.Header, code)
	}
	if code := send("before-secret", time.Now(), body, good); code != http.StatusUnauthorized {
		t.Errorf("a message before the secret was set: %d, want 401", code)
	}
	if code := postSecret("not-a-secret", true); code != http.StatusBadRequest {
		t.Errorf("POST /secret with a malformed secret: %d, want 400", code)
	}
	if code := postSecret(good+"\n", true); code != http.StatusOK {
		t.Fatalf("POST /secret: %d", code)
	}
	for _, c := range []struct {
		id      string
		ts      time.Time
		body    []byte
		secrets []string
		want    int
	}{
		{"signed", time.Now(), body, []string{good}, http.StatusNoContent},
		{"rotating", time.Now(), body, []string{other, good}, http.StatusNoContent},
		{"other-secret", time.Now(), body, []string{other}, http.StatusUnauthorized},
		{"stale", time.Now().Add(-2 * Tolerance), body, []string{good}, http.StatusUnauthorized},
		{"forged", time.Now(), forged, []string{other}, http.StatusUnauthorized},
	} {
		if code := send(c.id, c.ts, c.body, c.secrets...); code != c.want {
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
	ids := []string{"before-secret", "signed", "rotating", "other-secret", "stale", "forged", "tampered"}
	want := map[string]bool{"signed": true, "rotating": true} // verified
	if len(got) != len(ids) {
		t.Fatalf("GET /received listed %d messages, want %d: %+v", len(got), len(ids), got)
	}
	for i, id := range ids {
		m := got[i]
		wantType, wantBody := "oauth.reauth_required", body
		if id == "forged" {
			wantBody = forged
			var p struct{ Type string }
			if err := json.Unmarshal(forged, &p); err != nil {
				t.Fatal(err)
			}
			wantType = p.Type
		}
		if m.ID != id || m.Verified != want[id] || m.Type != wantType || (m.Error == "") != want[id] {
			t.Errorf("message %d = %+v, want id %s verified %v", i, m, id, want[id])
		}
		if id != "tampered" && !bytes.Equal(m.Body, wantBody) {
			t.Errorf("message %s body %s, want %s", id, m.Body, wantBody)
		}
	}
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) != 8 || lines[2] != `webhook "signed" "oauth.reauth_required": signature verified` ||
		!strings.HasPrefix(lines[4], `webhook "other-secret" "oauth.reauth_required": signature INVALID`) ||
		!strings.HasPrefix(lines[6], `webhook "forged" "x: signature INVALID\nwebhook forged`) ||
		!strings.HasSuffix(lines[6], `\nwebhook y": signature INVALID (no signature matches)`) {
		t.Errorf("log:\n%s", log.String())
	}
	for _, l := range lines {
		if strings.Contains(l, "forged") && !strings.HasPrefix(l, `webhook "forged" "x: `) {
			t.Errorf("the forged message wrote a line of its own: %s", l)
		}
	}
	if strings.Contains(log.String(), strings.TrimPrefix(good, "whsec_")) {
		t.Error("the log shows the secret")
	}
}

// TestReceiverKeepsTheLast: past MaxKept messages the receiver keeps the
// newest MaxKept, oldest first.
func TestReceiverKeepsTheLast(t *testing.T) {
	t.Parallel()
	r := New(io.Discard)
	const n = MaxKept + 5
	for i := range n {
		req := httptest.NewRequest(http.MethodPost, "/webhook", strings.NewReader(`{"type":"t"}`))
		req.Header.Set("webhook-id", "m"+strconv.Itoa(i))
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized {
			t.Fatalf("message %d without a secret: %d, want 401", i, rec.Code)
		}
	}
	got := r.Messages()
	if len(got) != MaxKept {
		t.Fatalf("kept %d messages of %d, want %d", len(got), n, MaxKept)
	}
	for i, m := range got {
		if want := "m" + strconv.Itoa(n-MaxKept+i); m.ID != want {
			t.Fatalf("message %d is %s, want %s", i, m.ID, want)
		}
	}
}

// TestReceiverLogUnlocked: the receiver writes its log under its own lock,
// so a log that is not safe for concurrent use (a bytes.Buffer) takes
// secrets and messages arriving at once (the race detector would see the
// writes otherwise), a whole line each.
func TestReceiverLogUnlocked(t *testing.T) {
	t.Parallel()
	var log bytes.Buffer
	r := New(&log)
	sec := newSecret(t)
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			req := httptest.NewRequest(http.MethodPost, "/secret", strings.NewReader(sec))
			req.Header.Set(democontrol.Header, "1")
			r.ServeHTTP(httptest.NewRecorder(), req)
		}()
		go func() {
			defer wg.Done()
			req := httptest.NewRequest(http.MethodPost, "/webhook", strings.NewReader(`{"type":"t"}`))
			req.Header.Set("webhook-id", "m"+strconv.Itoa(i))
			r.ServeHTTP(httptest.NewRecorder(), req)
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	set := 0
	for _, l := range lines {
		switch {
		case l == "webhook receiver: signing secret set":
			set++
		case !strings.HasPrefix(l, `webhook "m`) || !strings.Contains(l, `" "t": signature INVALID (`):
			t.Errorf("log line %q", l)
		}
	}
	if len(lines) != 2*n || set != n {
		t.Errorf("log has %d lines (%d secrets set), want %d (%d):\n%s", len(lines), set, 2*n, n, log.String())
	}
}
