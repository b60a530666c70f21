package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestAuditPagingHidesOtherTenantsVolume: events of two tenants are
// interleaved; tenant a's event names and page tokens show random public
// ids, never the row numbers (one sequence across tenants) from which a could
// count b's events. Paging one event at a time still returns each event once,
// newest first, and a token fails under another tenant or filter.
func TestAuditPagingHidesOtherTenantsVolume(t *testing.T) {
	t.Parallel()
	provEachBackend(t, func(t *testing.T, b provBackend) {
		s := provStart(t, b, Options{})
		key := s.AdminKey
		const n = 4
		for i := range n {
			provCreate(t, s, key, "a", fmt.Sprintf("pa%d", i), provNewProvider(fmt.Sprintf("a%d", i)))
			for j := range 3 {
				provCreate(t, s, key, "b", fmt.Sprintf("pb%d-%d", i, j), provNewProvider(fmt.Sprintf("b%d-%d", i, j)))
			}
		}
		name := regexp.MustCompile(`^tenants/a/auditEvents/[0-9a-f]{32}$`)
		req := &mcpauthv1.ListAuditEventsRequest{Parent: "tenants/a", EventType: "provider.created", PageSize: 1}
		var seen []string
		var tokens []string
		for {
			resp, err := s.Audit().ListAuditEvents(Ctx(t, key), req)
			if err != nil {
				t.Fatalf("ListAuditEvents: %v", err)
			}
			last := ""
			for _, e := range resp.GetAuditEvents() {
				last = strings.TrimPrefix(e.GetName(), "tenants/a/auditEvents/")
				if !name.MatchString(e.GetName()) {
					t.Errorf("event name %q is not tenants/a/auditEvents/<32 hex digits>", e.GetName())
				}
				seen = append(seen, e.GetProvider())
			}
			tok := resp.GetNextPageToken()
			if tok == "" {
				break
			}
			// The token holds the format version, what it is bound to and
			// the public id of the page's last event: nothing else.
			raw, err := base64.RawURLEncoding.DecodeString(tok)
			if err != nil {
				t.Fatalf("page token %q: %v", tok, err)
			}
			var fields map[string]any
			if err := json.Unmarshal(raw, &fields); err != nil || len(fields) != 3 || fields["k"] != last || fields["v"] != 1.0 {
				t.Errorf("page token %s holds more than the last event's public id %q", raw, last)
			}
			tokens = append(tokens, tok)
			req.PageToken = tok
		}
		want := []string{"tenants/a/providers/pa3", "tenants/a/providers/pa2", "tenants/a/providers/pa1", "tenants/a/providers/pa0"}
		if strings.Join(seen, " ") != strings.Join(want, " ") {
			t.Fatalf("paged events = %q, want %q", seen, want)
		}
		for _, tt := range []struct {
			what string
			req  *mcpauthv1.ListAuditEventsRequest
		}{
			{"another tenant", &mcpauthv1.ListAuditEventsRequest{Parent: "tenants/b", EventType: "provider.created", PageToken: tokens[0]}},
			{"another filter", &mcpauthv1.ListAuditEventsRequest{Parent: "tenants/a", PageToken: tokens[0]}},
		} {
			_, err := s.Audit().ListAuditEvents(Ctx(t, key), tt.req)
			provWantField(t, err, codes.InvalidArgument, "page_token")
		}
	})
}
