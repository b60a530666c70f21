package apperr_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/apperr"
)

func TestErrorAndPublic(t *testing.T) {
	t.Parallel()
	cause := fmt.Errorf("query credentials: %w", errors.New(`ERROR: relation "credentials" does not exist (SQLSTATE 42P01)`))
	tests := []struct {
		name   string
		err    *apperr.Error
		log    string // Error: the whole chain
		public string // Public: what a client may see
	}{
		{"internal keeps its cause for the log", apperr.Internal(cause, "get credential"),
			`get credential: query credentials: ERROR: relation "credentials" does not exist (SQLSTATE 42P01)`, "get credential"},
		{"unavailable keeps its cause for the log", apperr.Unavailable(cause, "%s: database unreachable", "get credential"),
			`get credential: database unreachable: query credentials: ERROR: relation "credentials" does not exist (SQLSTATE 42P01)`,
			"get credential: database unreachable"},
		{"invalid argument keeps the field prefix", apperr.Invalid("provider.server_url", "must use %s", "https"),
			"provider.server_url: must use https", "provider.server_url: must use https"},
		{"field and cause", &apperr.Error{Kind: apperr.KindInvalidArgument, Field: "page_token", Message: "malformed", Err: errors.New("base64: illegal byte 3")},
			"page_token: malformed: base64: illegal byte 3", "page_token: malformed"},
		{"no cause", apperr.NotFound("provider"), "provider not found", "provider not found"},
		{"cause without a message is logged but not shown", &apperr.Error{Kind: apperr.KindUnavailable, Err: errors.New("dial tcp 10.0.0.7:5432: connection refused")},
			"dial tcp 10.0.0.7:5432: connection refused", "unavailable"},
		{"empty failed precondition", &apperr.Error{Kind: apperr.KindFailedPrecondition}, "", "failed precondition"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.err.Error(); got != tt.log {
				t.Errorf("Error() = %q, want %q", got, tt.log)
			}
			if got := tt.err.Public(); got != tt.public {
				t.Errorf("Public() = %q, want %q", got, tt.public)
			}
			if tt.err.Err != nil && strings.Contains(tt.err.Public(), tt.err.Err.Error()) {
				t.Errorf("Public() %q shows the cause", tt.err.Public())
			}
		})
	}
}

func TestUnwrapAndIsThroughTheChain(t *testing.T) {
	t.Parallel()
	// A sentinel wrapped by a driver, classified by the repository, and
	// wrapped again by a use case: every layer stays reachable.
	driver := fmt.Errorf("read tcp: %w", fs.ErrClosed)
	classified := apperr.Unavailable(driver, "get credential: database unreachable")
	outer := fmt.Errorf("refresh: %w", classified)

	if got := classified.Unwrap(); got != driver {
		t.Fatalf("Unwrap() = %v, want the cause", got)
	}
	if apperr.NotFound("x").Unwrap() != nil {
		t.Fatal("Unwrap() of an error without a cause is not nil")
	}
	if !errors.Is(outer, fs.ErrClosed) {
		t.Error("errors.Is does not find the root cause through the chain")
	}
	if !errors.Is(outer, classified) {
		t.Error("errors.Is does not find the classified error")
	}
	e, ok := apperr.As(outer)
	if !ok || e != classified {
		t.Fatalf("As() = %v, %v; want the classified error", e, ok)
	}
	if apperr.KindOf(outer) != apperr.KindUnavailable {
		t.Errorf("KindOf() = %v, want UNAVAILABLE", apperr.KindOf(outer))
	}
	if want := "refresh: get credential: database unreachable: read tcp: file already closed"; outer.Error() != want {
		t.Errorf("outer Error() = %q, want %q", outer.Error(), want)
	}
	if apperr.KindOf(errors.New("plain")) != apperr.KindInternal {
		t.Error("an unclassified error is not INTERNAL")
	}
}

func TestPublicMessage(t *testing.T) {
	t.Parallel()
	secret := errors.New("password=hunter2")
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"classified", apperr.Unavailable(secret, "flow state store unavailable"), "flow state store unavailable"},
		{"wrapped", fmt.Errorf("begin: %w", apperr.Invalid("name", "must not be empty")), "name: must not be empty"},
		{"internal", apperr.Internal(secret, "opening tokens"), "internal error"},
		{"unclassified", secret, "internal error"},
		{"deadline", fmt.Errorf("call: %w", context.DeadlineExceeded), "deadline exceeded"},
		{"canceled", context.Canceled, "request canceled"},
		{"classified wins over a wrapped deadline", apperr.Unavailable(context.DeadlineExceeded, "the MCP server did not answer in time"),
			"the MCP server did not answer in time"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := apperr.PublicMessage(tt.err)
			if got != tt.want {
				t.Errorf("PublicMessage() = %q, want %q", got, tt.want)
			}
			if strings.Contains(got, "hunter2") {
				t.Errorf("PublicMessage() leaks the cause: %q", got)
			}
		})
	}
}

func TestKindString(t *testing.T) {
	t.Parallel()
	for k, want := range map[apperr.Kind]string{
		apperr.KindInternal:        "INTERNAL",
		apperr.KindInvalidArgument: "INVALID_ARGUMENT",
		apperr.KindUnimplemented:   "UNIMPLEMENTED",
		apperr.Kind(99):            "KIND_99",
	} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), got, want)
		}
	}
}
