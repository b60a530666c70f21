package caller

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Reloader serves the callers of a callers file and follows changes to it
// without a restart: Check re-reads the file and, when its content changed
// and the new document is valid, swaps the whole set at once (a request sees
// the old set or the new one, never a mix). A file that does not read or
// validate keeps the previous set, and Watch logs why (the errors name
// entries and fields; the file holds key hashes, never keys).
type Reloader struct {
	path string
	log  *slog.Logger

	cur atomic.Pointer[Authenticator]

	mu  sync.Mutex // serialises Check
	sum [32]byte   // SHA-256 of the content cur was built from
}

// NewReloader loads path, which must be valid now: a service must not
// start without its callers.
func NewReloader(path string, log *slog.Logger) (*Reloader, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading callers file: %w", err)
	}
	a, err := parseFile(path, raw)
	if err != nil {
		return nil, err
	}
	r := &Reloader{path: path, log: log, sum: sha256.Sum256(raw)}
	r.cur.Store(a)
	return r, nil
}

// Authenticate implements the key lookup on the current set.
func (r *Reloader) Authenticate(key string) (*Identity, bool) { return r.cur.Load().Authenticate(key) }

// AuthenticateCert implements the certificate lookup on the current set.
func (r *Reloader) AuthenticateCert(cert *x509.Certificate) (*Identity, bool) {
	return r.cur.Load().AuthenticateCert(cert)
}

// Check re-reads the file and applies it when its content changed. It
// reports whether a new set took effect; err says why a changed file was
// refused (the previous set stays).
func (r *Reloader) Check() (changed bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	raw, err := os.ReadFile(r.path)
	if err != nil {
		return false, fmt.Errorf("reading callers file: %w", err)
	}
	sum := sha256.Sum256(raw)
	if bytes.Equal(sum[:], r.sum[:]) {
		return false, nil
	}
	a, err := parseFile(r.path, raw)
	if err != nil {
		return false, err
	}
	r.cur.Store(a)
	r.sum = sum
	return true, nil
}

// Watch checks the file every interval and whenever hup receives, until ctx
// ends, logging each change applied or refused. A refused content is logged
// once, not at every tick, until the file changes again. Polling the
// content (rather than watching inodes) also follows files that are
// replaced by renaming, such as Kubernetes Secret volumes.
func (r *Reloader) Watch(ctx context.Context, interval time.Duration, hup <-chan os.Signal) {
	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}
	var lastErr string
	for {
		trigger := "poll"
		select {
		case <-ctx.Done():
			return
		case <-tick:
		case <-hup:
			trigger = "SIGHUP"
		}
		changed, err := r.Check()
		switch {
		case err != nil:
			if msg := err.Error(); msg != lastErr || trigger == "SIGHUP" {
				r.log.Error("callers file not reloaded: keeping the previous callers", "path", r.path, "trigger", trigger, "err", msg)
				lastErr = msg
			}
		case changed:
			lastErr = ""
			r.log.Info("callers file reloaded", "path", r.path, "trigger", trigger, "callers", r.cur.Load().Len())
		case trigger == "SIGHUP":
			r.log.Info("callers file unchanged", "path", r.path)
		}
	}
}
