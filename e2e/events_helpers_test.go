package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/mcpauth/mcpauth/e2e/internal/webhookrecv"
)

// evMessage is one message a receiver took.
type evMessage struct {
	ID       string
	Time     time.Time
	Received time.Time
	Body     []byte
	Type     string
	Name     string
	Provider string
	// Created is the event's time from the payload.
	Created time.Time
}

// evReceiver is a webhook receiver (httptest) that verifies each message
// with the spec's algorithm (webhookrecv.Verify), answers as fail says,
// and keeps the messages it accepted with 2xx.
type evReceiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	secret string
	down   bool
	got    []evMessage
	// byType counts the messages accepted per type (the benchmark polls
	// it instead of copying every message).
	byType map[string]int
	bad    []string
	tries  int
	notify chan struct{}
	// beforeNext, when set, runs (once) before the next request is
	// answered.
	beforeNext func()
	// delay holds every answer back this long (a slow endpoint).
	delay time.Duration
}

func evNewReceiver(tb testing.TB) *evReceiver {
	tb.Helper()
	r := &evReceiver{notify: make(chan struct{}, 1), byType: map[string]int{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	tb.Cleanup(r.srv.Close)
	return r
}

func (r *evReceiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	before, delay := r.beforeNext, r.delay
	r.beforeNext = nil
	r.mu.Unlock()
	if before != nil {
		before()
	}
	time.Sleep(delay)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tries++
	if r.down {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	id, ts, sig := req.Header.Get("webhook-id"), req.Header.Get("webhook-timestamp"), req.Header.Get("webhook-signature")
	if err := webhookrecv.Verify(r.secret, id, ts, body, sig); err != nil {
		r.bad = append(r.bad, id+": "+err.Error())
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	sec, _ := strconv.ParseInt(ts, 10, 64)
	var p struct {
		Type      string    `json:"type"`
		Timestamp time.Time `json:"timestamp"`
		Data      struct {
			Name     string `json:"name"`
			Provider string `json:"provider"`
		} `json:"data"`
	}
	_ = json.Unmarshal(body, &p)
	r.got = append(r.got, evMessage{ID: id, Time: time.Unix(sec, 0), Received: time.Now(), Body: body, Type: p.Type,
		Name: p.Data.Name, Provider: p.Data.Provider, Created: p.Timestamp})
	r.byType[p.Type]++
	select {
	case r.notify <- struct{}{}:
	default:
	}
	w.WriteHeader(http.StatusNoContent)
}

func (r *evReceiver) setDown(down bool) {
	r.mu.Lock()
	r.down = down
	r.mu.Unlock()
}

// setDelay holds every answer back by d.
func (r *evReceiver) setDelay(d time.Duration) {
	r.mu.Lock()
	r.delay = d
	r.mu.Unlock()
}

// setBeforeNext makes fn run before the receiver answers its next request.
func (r *evReceiver) setBeforeNext(fn func()) {
	r.mu.Lock()
	r.beforeNext = fn
	r.mu.Unlock()
}

func (r *evReceiver) setSecret(s string) {
	r.mu.Lock()
	r.secret = s
	r.mu.Unlock()
}

func (r *evReceiver) messages() []evMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]evMessage(nil), r.got...)
}

// count returns how many messages of type typ the receiver accepted.
func (r *evReceiver) count(typ string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byType[typ]
}

func (r *evReceiver) attempts() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tries
}

func (r *evReceiver) badSignatures() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bad...)
}

// waitFor waits until the receiver accepted messages with every name in
// names (or the deadline passes) and returns what it accepted.
func (r *evReceiver) waitFor(tb testing.TB, names []string, within time.Duration) []evMessage {
	tb.Helper()
	deadline := time.After(within)
	for {
		got := r.messages()
		seen := map[string]bool{}
		for _, m := range got {
			seen[m.Name] = true
		}
		missing := 0
		for _, n := range names {
			if !seen[n] {
				missing++
			}
		}
		if missing == 0 {
			return got
		}
		select {
		case <-r.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			tb.Fatalf("receiver got %d messages; %d of %d events missing after %v", len(got), missing, len(names), within)
		}
	}
}

// metadataCtx adds key as the caller's API key to ctx.
func metadataCtx(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}
