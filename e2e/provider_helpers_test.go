package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/repository"
)

// Field names of the associated data the service seals provider secrets
// under (service/deps.go). The tests open ciphertexts with the service's
// own keyring to prove what is stored, so they repeat them here.
const (
	provFieldServerURL    = "provider.server_url"
	provFieldHeaders      = "provider.headers"
	provFieldClientSecret = "provider.oauth_client.client_secret"
	provFieldTokens       = "credential.tokens"
)

// provBackend is one database the suites run against.
type provBackend struct {
	name     string
	postgres bool
}

var provBackends = []provBackend{{name: "sqlite"}, {name: "postgres", postgres: true}}

// provEachBackend runs fn as a parallel subtest per database backend. Each
// subtest starts its own service, so they share nothing.
func provEachBackend(t *testing.T, fn func(t *testing.T, b provBackend)) {
	t.Helper()
	for _, b := range provBackends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			fn(t, b)
		})
	}
}

// provStart starts a service with the default admin key on backend b.
func provStart(tb testing.TB, b provBackend, o Options) *Service {
	tb.Helper()
	o.Postgres = o.Postgres || b.postgres
	return Start(tb, o)
}

// provStatus asserts err is a gRPC status with code and returns it.
func provStatus(tb testing.TB, err error, code codes.Code) *status.Status {
	tb.Helper()
	if err == nil {
		tb.Fatalf("call succeeded, want %v", code)
	}
	st, ok := status.FromError(err)
	if !ok {
		tb.Fatalf("error %v is not a gRPC status", err)
	}
	if st.Code() != code {
		tb.Fatalf("code = %v (%q), want %v", st.Code(), st.Message(), code)
	}
	return st
}

// provViolations returns the fields of the google.rpc.BadRequest detail of
// st, if any.
func provViolations(st *status.Status) []string {
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

// provErrorReason returns the google.rpc.ErrorInfo reason of st.
func provErrorReason(st *status.Status) string {
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetReason()
		}
	}
	return ""
}

// provWantField asserts err has code and exactly one field violation, on
// field.
func provWantField(tb testing.TB, err error, code codes.Code, field string) *status.Status {
	tb.Helper()
	st := provStatus(tb, err, code)
	if got := provViolations(st); len(got) != 1 || got[0] != field {
		tb.Fatalf("field violations = %q, want [%q] (message %q)", got, field, st.Message())
	}
	return st
}

// provNewProvider returns a valid provider whose unique fields derive from
// n.
func provNewProvider(n string) *mcpauthv1.Provider {
	return &mcpauthv1.Provider{
		DisplayName:      "Provider " + n,
		ServerIdentifier: "server-" + n,
		ServerUrl:        "https://mcp-" + n + ".example.com/mcp",
	}
}

// provCreate creates p as id in tenant and returns the created view.
func provCreate(tb testing.TB, s *Service, key, tenant, id string, p *mcpauthv1.Provider) *mcpauthv1.Provider {
	tb.Helper()
	resp, err := s.Providers().CreateProvider(Ctx(tb, key), &mcpauthv1.CreateProviderRequest{
		Parent: "tenants/" + tenant, ProviderId: id, Provider: p})
	if err != nil {
		tb.Fatalf("CreateProvider(%s/%s): %v", tenant, id, err)
	}
	return resp.GetProvider()
}

// provGet returns the provider's view.
func provGet(tb testing.TB, s *Service, key, name string) *mcpauthv1.Provider {
	tb.Helper()
	resp, err := s.Providers().GetProvider(Ctx(tb, key), &mcpauthv1.GetProviderRequest{Name: name})
	if err != nil {
		tb.Fatalf("GetProvider(%s): %v", name, err)
	}
	return resp.GetProvider()
}

// provListAll pages through the tenant's providers with pageSize and
// returns the pages.
func provListAll(tb testing.TB, s *Service, key, tenant string, pageSize int32) [][]*mcpauthv1.Provider {
	tb.Helper()
	var pages [][]*mcpauthv1.Provider
	tok := ""
	for i := 0; ; i++ {
		if i > 1000 {
			tb.Fatal("ListProviders does not terminate")
		}
		resp, err := s.Providers().ListProviders(Ctx(tb, key), &mcpauthv1.ListProvidersRequest{
			Parent: "tenants/" + tenant, PageSize: pageSize, PageToken: tok})
		if err != nil {
			tb.Fatalf("ListProviders(%s, page %d): %v", tenant, i, err)
		}
		pages = append(pages, resp.GetProviders())
		if tok = resp.GetNextPageToken(); tok == "" {
			return pages
		}
	}
}

// provAuditEvents returns every audit event of tenant, newest first.
func provAuditEvents(tb testing.TB, s *Service, key, tenant string) []*mcpauthv1.AuditEvent {
	tb.Helper()
	var out []*mcpauthv1.AuditEvent
	tok := ""
	for {
		resp, err := s.Audit().ListAuditEvents(Ctx(tb, key), &mcpauthv1.ListAuditEventsRequest{
			Parent: "tenants/" + tenant, PageSize: 500, PageToken: tok})
		if err != nil {
			tb.Fatalf("ListAuditEvents(%s): %v", tenant, err)
		}
		out = append(out, resp.GetAuditEvents()...)
		if tok = resp.GetNextPageToken(); tok == "" {
			return out
		}
	}
}

// provRowCount counts the rows of table across all tenants, straight from
// the database.
func provRowCount(tb testing.TB, s *Service, table string) int64 {
	tb.Helper()
	var n int64
	if err := s.Store().DB().Table(table).Count(&n).Error; err != nil {
		tb.Fatalf("counting %s: %v", table, err)
	}
	return n
}

// provRow reads one provider row straight from the database.
func provRow(tb testing.TB, s *Service, tenant, id string) *repository.Provider {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	row, err := s.Store().GetProvider(ctx, tenant, id)
	if err != nil {
		tb.Fatalf("reading provider row %s/%s: %v", tenant, id, err)
	}
	return row
}

// provOpen decrypts one ciphertext column of a provider row with the
// service's keyring.
func provOpen(tb testing.TB, s *Service, row *repository.Provider, field string, ct []byte) string {
	tb.Helper()
	pt, err := s.App.Keys().Open(keyring.Scope{Tenant: row.TenantID, Provider: row.ID, Field: field}, ct)
	if err != nil {
		tb.Fatalf("opening %s of %s/%s: %v", field, row.TenantID, row.ID, err)
	}
	return string(pt)
}

// provTables lists the tables of the service's database (the test's own
// PostgreSQL schema or SQLite file).
func provTables(tb testing.TB, s *Service) []string {
	tb.Helper()
	db := s.Store().DB()
	var names []string
	var err error
	if db.Dialector.Name() == "postgres" {
		err = db.Raw("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'").Scan(&names).Error
	} else {
		err = db.Raw("SELECT name FROM sqlite_master WHERE type = 'table'").Scan(&names).Error
	}
	if err != nil {
		tb.Fatalf("listing tables: %v", err)
	}
	slices.Sort(names)
	for _, want := range []string{"audit_events", "client_registrations", "credentials", "providers", "tool_lists"} {
		if !slices.Contains(names, want) {
			tb.Fatalf("tables %q lack %q: the dump would not cover the schema", names, want)
		}
	}
	return names
}

// provDumpDB returns every row of every table as text: each value printed
// with %v, and byte values also as raw text, so a secret stored in clear in
// any column shows up. Rows are scanned into plain interface values (GORM's
// map scan picks Go types from column metadata, which fails on some SQLite
// blob columns).
func provDumpDB(tb testing.TB, s *Service) string {
	tb.Helper()
	var b strings.Builder
	for _, table := range provTables(tb, s) {
		for _, r := range provTableRows(tb, s, table) {
			fmt.Fprintf(&b, "%s:", table)
			for k, v := range r {
				fmt.Fprintf(&b, " %s=%v", k, v)
				if x, ok := v.([]byte); ok {
					fmt.Fprintf(&b, " %s=%s", k, string(x))
				}
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// provTableRows reads every row of table into maps keyed by column.
func provTableRows(tb testing.TB, s *Service, table string) []map[string]any {
	tb.Helper()
	rows, err := s.Store().DB().Raw(`SELECT * FROM "` + table + `"`).Rows()
	if err != nil {
		tb.Fatalf("dumping %s: %v", table, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		tb.Fatal(err)
	}
	var out []map[string]any
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			tb.Fatalf("scanning %s: %v", table, err)
		}
		m := make(map[string]any, len(cols))
		for i, c := range cols {
			m[c] = vals[i]
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		tb.Fatalf("dumping %s: %v", table, err)
	}
	return out
}

// provJSON marshals m with protojson (every field, proto names) for
// substring searches.
func provJSON(tb testing.TB, m proto.Message) string {
	tb.Helper()
	b, err := protojson.MarshalOptions{EmitUnpopulated: true, UseProtoNames: true}.Marshal(m)
	if err != nil {
		tb.Fatalf("protojson: %v", err)
	}
	return string(b)
}

// provDur is durationpb.New.
func provDur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// provHeaderNames lists the names in a view's header_info.
func provHeaderNames(p *mcpauthv1.Provider) []string {
	var out []string
	for _, h := range p.GetHeaderInfo() {
		out = append(out, h.GetName())
	}
	return out
}

// provScope is the associated-data scope of one provider field.
func provScope(tenant, id, field string) keyring.Scope {
	return keyring.Scope{Tenant: tenant, Provider: id, Field: field}
}

// provWithout returns a copy of p with the named fields (proto names)
// cleared, for comparisons that ignore them.
func provWithout(p *mcpauthv1.Provider, fields ...string) *mcpauthv1.Provider {
	c := proto.Clone(p).(*mcpauthv1.Provider)
	m := c.ProtoReflect()
	for _, f := range fields {
		fd := m.Descriptor().Fields().ByName(protoreflect.Name(f))
		if fd == nil {
			panic("provWithout: no field " + f)
		}
		m.Clear(fd)
	}
	return c
}

// provHTTP sends one REST request to the gateway. An empty key sends no
// Authorization header; hdr adds headers.
func provHTTP(tb testing.TB, s *Service, method, path, key, body string, hdr map[string]string) (int, http.Header, []byte) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.HTTPURL+path, rd)
	if err != nil {
		tb.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, raw
}
