// Package secret holds the Secret type: a string that cannot be printed,
// logged or marshalled by accident. Every token, code, verifier, client
// secret and header value travels through the service as a Secret.
package secret

import (
	"encoding/json"
	"fmt"
	"log/slog"
)

// Redacted is what a Secret shows wherever it is formatted.
const Redacted = "[REDACTED]"

// Secret is a sensitive string. Its String, GoString, LogValue and
// MarshalJSON methods redact; only Reveal returns the value.
type Secret struct {
	v string
}

// New wraps s.
func New(s string) Secret { return Secret{v: s} }

// Reveal returns the value. Call it only where the value leaves the process
// on purpose (an HTTP request to the server it belongs to, an API response
// that is meant to carry it, the encryption of it).
func (s Secret) Reveal() string { return s.v }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.v == "" }

// String redacts.
func (s Secret) String() string {
	if s.v == "" {
		return ""
	}
	return Redacted
}

// GoString redacts, so %#v does not leak either.
func (s Secret) GoString() string { return s.String() }

// LogValue redacts in slog output.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON redacts, so a Secret inside a logged struct stays hidden.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// Format redacts for every verb of the fmt package (%x and %q included).
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }
