package server

import (
	"go/ast"
	"go/parser"
	"go/token"
	"strconv"
	"testing"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/domain"
)

// TestReasonsDeclaredInAPI: every reason code the domain declares is a value
// of the API's ErrorReason enum (so callers can switch on it), and every
// audit event type and registration method has its enum value.
func TestReasonsDeclaredInAPI(t *testing.T) {
	t.Parallel()
	f, err := parser.ParseFile(token.NewFileSet(), "../domain/reasons.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	ast.Inspect(f, func(node ast.Node) bool {
		lit, ok := node.(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return true
		}
		reason, err := strconv.Unquote(lit.Value)
		if err != nil {
			t.Fatal(err)
		}
		n++
		if _, ok := mcpauthv1.ErrorReason_value[reason]; !ok {
			t.Errorf("reason %q is not a value of mcpauth.v1.ErrorReason", reason)
		}
		return true
	})
	if n < 30 {
		t.Fatalf("found %d reasons in domain/reasons.go, want them all", n)
	}
	for _, et := range domain.EventTypes {
		if eventTypes[et] == mcpauthv1.AuditEventType_AUDIT_EVENT_TYPE_UNSPECIFIED {
			t.Errorf("event type %q has no AuditEventType value", et)
		}
	}
	for _, m := range []domain.RegistrationMethod{domain.RegPreRegistered, domain.RegCIMD, domain.RegDynamic} {
		if registrationMethods[m] == mcpauthv1.RegistrationMethod_REGISTRATION_METHOD_UNSPECIFIED {
			t.Errorf("registration method %q has no RegistrationMethod value", m)
		}
	}
	for s := domain.StatusNotRequired; s <= domain.StatusReauthRequired; s++ {
		if authStatuses[s] == mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNSPECIFIED {
			t.Errorf("status %v has no AuthorizationStatus value", s)
		}
	}
}
