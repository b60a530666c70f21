package secret

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestSecretNeverPrints(t *testing.T) {
	t.Parallel()
	const value = "sk-live-very-secret"
	s := New(value)
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	logger.Info("x", "s", s, "nested", struct{ S Secret }{s})
	js, err := json.Marshal(map[string]any{"s": s})
	if err != nil {
		t.Fatal(err)
	}
	outputs := []string{
		fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %q %x", s, s, s, s, s, s),
		fmt.Sprintf("%v", struct{ S Secret }{s}), buf.String(), string(js),
	}
	for _, out := range outputs {
		if strings.Contains(out, value) {
			t.Errorf("secret leaked in %q", out)
		}
		if !strings.Contains(out, Redacted) {
			t.Errorf("output %q does not show the redaction marker", out)
		}
	}
	if s.Reveal() != value {
		t.Fatalf("Reveal = %q", s.Reveal())
	}
}

func TestEmptySecret(t *testing.T) {
	t.Parallel()
	var s Secret
	if !s.IsZero() || s.String() != "" {
		t.Fatalf("zero secret: IsZero=%v String=%q", s.IsZero(), s.String())
	}
}
