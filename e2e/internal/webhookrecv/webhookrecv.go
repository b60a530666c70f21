// Package webhookrecv receives Standard Webhooks messages the way a
// receiver outside mcpauth would: it verifies each signature with the
// specification's algorithm, written here from the specification rather
// than taken from the library mcpauth signs with, so that a signing bug
// cannot hide behind the same bug in the check. The end-to-end tests use
// Verify; the demo (e2e/cmd/mcpauth-demo) serves a Receiver for the README's
// walk-through.
package webhookrecv

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mcpauth/mcpauth/e2e/internal/democontrol"
)

// Verify checks a message's signature as the Standard Webhooks
// specification (v1.0.0, "Signature scheme", symmetric signatures) states
// it: the secret is "whsec_" followed by the base64 key; the signed content
// is the message id, the timestamp and the raw body joined by full stops;
// the signature is the base64 of its HMAC-SHA256 under the key;
// webhook-signature holds a space-delimited list of "v1,<signature>"
// entries, any one of which may match (there is more than one while a
// secret is rotated).
func Verify(secret, id, ts string, body []byte, header string) error {
	key, err := decodeSecret(secret)
	if err != nil {
		return err
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	want := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	for _, part := range strings.Split(header, " ") {
		ver, sig, ok := strings.Cut(part, ",")
		if ok && ver == "v1" && hmac.Equal([]byte(sig), []byte(want)) {
			return nil
		}
	}
	return errors.New("no signature matches")
}

func decodeSecret(secret string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil || !strings.HasPrefix(secret, "whsec_") || len(key) == 0 {
		return nil, errors.New("secret is not whsec_ and base64")
	}
	return key, nil
}

// Tolerance is how far a message's webhook-timestamp may be from the
// receiver's clock, as the specification advises against replays.
const Tolerance = 5 * time.Minute

// maxBody bounds what the receiver reads of a message or a secret.
const maxBody = 1 << 20

// MaxKept is how many messages the receiver keeps: the newest, the older
// ones dropped, so that a sender (or anyone who reaches the receiver) cannot
// grow its memory without limit.
const MaxKept = 1000

// Message is one message the receiver took, as GET /received lists it.
type Message struct {
	// ID is its webhook-id (for mcpauth, the event id: repeats share it).
	ID string `json:"id"`
	// Type is the payload's type (the event type), when it has one.
	Type string `json:"type"`
	// Verified says the signature and timestamp checked out.
	Verified bool `json:"verified"`
	// Error says why not.
	Error string `json:"error,omitempty"`
	// ReceivedAt is when it arrived.
	ReceivedAt time.Time `json:"received_at"`
	// Body is the payload as posted (a JSON string if it is not JSON).
	Body json.RawMessage `json:"body"`
}

// Receiver is a webhook receiver, an http.Handler:
//
//	POST /webhook   a message: verified, kept, one line written to the log;
//	                204 if it verifies, else 401 (the sender retries)
//	POST /secret    the endpoint's signing secret ("whsec_..."), the body;
//	                it needs the header "X-Demo-Control: 1" (democontrol),
//	                403 without it, so that no web page can set a secret
//	GET  /received  the last MaxKept messages, oldest first, as a JSON list
//
// The secret arrives by POST because mcpauth shows it only in the answers
// of CreateWebhookEndpoint and RotateWebhookEndpointSecret. It is never
// written anywhere.
//
// A log line quotes (Go's %q) what the message carries, its webhook-id and
// its type, so that a message cannot write a line of its own (such as a
// forged "signature verified") with a newline. Lines are written under the
// receiver's lock: the log need not be safe for concurrent use.
type Receiver struct {
	mux *http.ServeMux
	log io.Writer
	now func() time.Time

	mu     sync.Mutex // guards secret, got and writes to log
	secret string
	got    []Message // the last MaxKept messages, oldest first
}

// New returns a Receiver that writes a line per message to log.
func New(log io.Writer) *Receiver {
	r := &Receiver{mux: http.NewServeMux(), log: log, now: time.Now}
	r.mux.HandleFunc("POST /webhook", r.message)
	r.mux.HandleFunc("POST /secret", democontrol.Require(r.setSecret))
	r.mux.HandleFunc("GET /received", r.received)
	return r
}

// ServeHTTP serves the receiver's three routes.
func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) { r.mux.ServeHTTP(w, req) }

func (r *Receiver) message(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxBody))
	if err != nil {
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return
	}
	id, ts, sig := req.Header.Get("webhook-id"), req.Header.Get("webhook-timestamp"), req.Header.Get("webhook-signature")
	m := Message{ID: id, ReceivedAt: r.now().UTC(), Body: body}
	var p struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(body, &p) == nil {
		m.Type = p.Type
	} else {
		m.Body, _ = json.Marshal(string(body))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.check(id, ts, body, sig); err != nil {
		m.Error = err.Error()
	} else {
		m.Verified = true
	}
	r.keep(m)
	if m.Verified {
		fmt.Fprintf(r.log, "webhook %q %q: signature verified\n", m.ID, m.Type)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	fmt.Fprintf(r.log, "webhook %q %q: signature INVALID (%s)\n", m.ID, m.Type, m.Error)
	http.Error(w, "signature INVALID", http.StatusUnauthorized)
}

// keep appends m to the messages kept, dropping the oldest beyond MaxKept
// (r.mu held).
func (r *Receiver) keep(m Message) {
	if len(r.got) >= MaxKept {
		n := copy(r.got, r.got[len(r.got)-MaxKept+1:])
		clear(r.got[n:])
		r.got = r.got[:n]
	}
	r.got = append(r.got, m)
}

// check verifies a message under the secret held (r.mu held).
func (r *Receiver) check(id, ts string, body []byte, sig string) error {
	if r.secret == "" {
		return errors.New("no secret yet: POST it to /secret")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("webhook-timestamp is not a number")
	}
	if d := r.now().Sub(time.Unix(sec, 0)); d > Tolerance || d < -Tolerance {
		return fmt.Errorf("webhook-timestamp is %s off", d.Round(time.Second))
	}
	return Verify(r.secret, id, ts, body, sig)
}

func (r *Receiver) setSecret(w http.ResponseWriter, req *http.Request) {
	raw, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxBody))
	if err != nil {
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return
	}
	secret := strings.TrimSpace(string(raw))
	if _, err := decodeSecret(secret); err != nil {
		http.Error(w, "the body must be the endpoint's signing secret, whsec_ and base64", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.secret = secret
	fmt.Fprintln(r.log, "webhook receiver: signing secret set")
	r.mu.Unlock()
	_, _ = io.WriteString(w, "signing secret set\n")
}

func (r *Receiver) received(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(r.Messages())
}

// Messages returns the messages kept, oldest first.
func (r *Receiver) Messages() []Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Message{}, r.got...)
}
