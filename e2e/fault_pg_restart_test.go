package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// Settings of the PostgreSQL restart fault test.
const (
	pgrEnvVar        = "MCPAUTH_FAULT_PG_RESTART"
	pgrTenant        = "pgfault"
	pgrWriters       = 16
	pgrLoadDuration  = 20 * time.Second
	pgrRestartAfter  = 5 * time.Second
	pgrAfterReady    = 3 * time.Second // writers keep going at least this long once PostgreSQL is back
	pgrCallTimeout   = 10 * time.Second
	pgrFailBackoff   = 25 * time.Millisecond // a failed writer pauses like a real client would
	pgrReadyTimeout  = 90 * time.Second
	pgrRestartScript = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main restart -m fast"
	pgrStartScript   = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)

// pgrCleanCodes are the codes a create may fail with while the database is
// away: the client learns the call did not (knowingly) succeed and may
// retry. INTERNAL or UNKNOWN would mean a database outage leaks out as a
// server bug.
var pgrCleanCodes = []codes.Code{codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.ResourceExhausted}

// pgrAttempt is one CreateProvider call of a writer.
type pgrAttempt struct {
	id         string
	start, end time.Time
	code       codes.Code // codes.OK when acknowledged
	msg        string
	view       *mcpauthv1.Provider // the acknowledged view
}

// pgrRestart is what the restarter saw.
type pgrRestart struct {
	begin, cmdDone, ready time.Time
	// down and up bound the outage as pg_isready, polled every 20ms from
	// the start of the command, saw it (zero when it saw none).
	down, up time.Time
	output   string
	err      error
}

// TestPostgresRestartUnderLoad restarts the machine's PostgreSQL while 16
// writers create providers, then checks DESIGN.md section 7: no
// acknowledged write is lost, failures are clean codes, nothing is
// half-written, the audit log holds every acknowledged create, and the
// service recovers by itself.
//
// It is opt-in: it restarts the whole PostgreSQL cluster, which breaks every
// other test using PostgreSQL at the same time. Run it alone:
//
//	MCPAUTH_FAULT_PG_RESTART=1 go test -count=1 -run TestPostgresRestartUnderLoad -v ./e2e/
func TestPostgresRestartUnderLoad(t *testing.T) {
	if os.Getenv(pgrEnvVar) != "1" {
		t.Skipf("SKIPPING: opt-in fault test; it restarts the machine's PostgreSQL cluster (breaking any test running in parallel). Set %s=1 and run it alone to enable it.", pgrEnvVar)
	}
	for _, tool := range []string{"bash", "pg_ctlcluster", "pg_isready"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s=1 but %s is not installed: %v", pgrEnvVar, tool, err)
		}
	}
	if !pgrReady() {
		t.Fatal("PostgreSQL is not ready at 127.0.0.1:5432 before the test")
	}

	s := Start(t, Options{Postgres: true, Env: map[string]string{"MCPAUTH_DATABASE_MAX_CONNS": "10"}})
	// Registered after Start, so it runs before the schema is dropped: leave
	// PostgreSQL up whatever happened.
	t.Cleanup(func() { pgrEnsureUp(t) })
	key := s.AdminKey
	pc := s.Providers()
	authCtx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+key)

	// Warm-up: the service works before the fault.
	provCreate(t, s, key, pgrTenant, "warmup", pgrProvider("warmup"))

	stop := make(chan struct{})
	results := make([][]pgrAttempt, pgrWriters)
	var wg sync.WaitGroup
	loadStart := time.Now()
	for w := range pgrWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("w%02d-%06d", w, i)
				ctx, cancel := context.WithTimeout(authCtx, pgrCallTimeout)
				a := pgrAttempt{id: id, start: time.Now()}
				resp, err := pc.CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{
					Parent: "tenants/" + pgrTenant, ProviderId: id, Provider: pgrProvider(id)})
				a.end = time.Now()
				cancel()
				if err != nil {
					st := status.Convert(err)
					a.code, a.msg = st.Code(), st.Message()
				} else {
					a.view = resp.GetProvider()
				}
				results[w] = append(results[w], a)
				if err != nil {
					time.Sleep(pgrFailBackoff)
				}
			}
		}()
	}

	restartDone := make(chan pgrRestart, 1)
	go func() {
		time.Sleep(pgrRestartAfter)
		var r pgrRestart
		r.begin = time.Now()
		pollStop, pollDone := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(pollDone)
			for {
				select {
				case <-pollStop:
					return
				default:
				}
				ok := pgrReady()
				now := time.Now()
				if !ok && r.down.IsZero() {
					r.down = now
				}
				if ok && !r.down.IsZero() {
					r.up = now
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
		out, err := exec.Command("bash", "-c", pgrRestartScript).CombinedOutput()
		r.cmdDone = time.Now()
		r.output, r.err = strings.TrimSpace(string(out)), err
		deadline := time.Now().Add(pgrReadyTimeout)
		for time.Now().Before(deadline) {
			if pgrReady() {
				r.ready = time.Now()
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		close(pollStop)
		<-pollDone
		if !r.down.IsZero() && r.up.IsZero() {
			r.up = r.ready
		}
		restartDone <- r
	}()

	rs := <-restartDone
	end := loadStart.Add(pgrLoadDuration)
	if !rs.ready.IsZero() && rs.ready.Add(pgrAfterReady).After(end) {
		end = rs.ready.Add(pgrAfterReady)
	}
	time.Sleep(time.Until(end))
	close(stop)
	wg.Wait()
	loadEnd := time.Now()

	if rs.err != nil {
		t.Errorf("restart command %q failed: %v\n%s", pgrRestartScript, rs.err, rs.output)
	}
	if rs.ready.IsZero() {
		t.Fatalf("PostgreSQL not ready within %v of the restart (pg_isready -h 127.0.0.1 -p 5432)", pgrReadyTimeout)
	}

	var all []pgrAttempt
	for _, r := range results {
		all = append(all, r...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].end.Before(all[j].end) })

	acked := map[string]*mcpauthv1.Provider{}
	attempted := map[string]codes.Code{}
	failedBy := map[codes.Code]int{}
	var firstFail, lastFail *pgrAttempt
	var maxLatency time.Duration
	var badCode, earlyFail []string
	for i := range all {
		a := &all[i]
		attempted[a.id] = a.code
		maxLatency = max(maxLatency, a.end.Sub(a.start))
		if a.code == codes.OK {
			if a.view == nil || a.view.GetName() != "tenants/"+pgrTenant+"/providers/"+a.id {
				badCode = append(badCode, fmt.Sprintf("%s: acknowledged with view %v", a.id, a.view))
			}
			acked[a.id] = a.view
			continue
		}
		failedBy[a.code]++
		if firstFail == nil {
			firstFail = a
		}
		lastFail = a
		if !slices.Contains(pgrCleanCodes, a.code) {
			badCode = append(badCode, fmt.Sprintf("%s: %v %q (at +%v)", a.id, a.code, a.msg, a.end.Sub(rs.begin).Round(time.Millisecond)))
		}
		if a.end.Before(rs.begin) {
			earlyFail = append(earlyFail, fmt.Sprintf("%s: %v %q", a.id, a.code, a.msg))
		}
	}

	// Recovery as the writers saw it.
	back := rs.up // PostgreSQL accepting connections again
	if back.IsZero() {
		back = rs.ready
	}
	var firstOKAfterFail, firstOKAfterReady *pgrAttempt
	for i := range all {
		a := &all[i]
		if a.code != codes.OK {
			continue
		}
		if firstFail != nil && firstOKAfterFail == nil && !a.start.Before(firstFail.end) {
			firstOKAfterFail = a
		}
		if firstOKAfterReady == nil && !a.start.Before(back) {
			firstOKAfterReady = a
		}
	}

	rel := func(tm time.Time) string {
		if tm.IsZero() {
			return "never"
		}
		return "+" + tm.Sub(rs.begin).Round(time.Millisecond).String()
	}
	var codeSummary []string
	for c, n := range failedBy {
		codeSummary = append(codeSummary, fmt.Sprintf("%v=%d", c, n))
	}
	sort.Strings(codeSummary)
	t.Logf("load: %d writers for %v, %d creates attempted (%.0f/s), max call latency %v",
		pgrWriters, loadEnd.Sub(loadStart).Round(time.Millisecond), len(all),
		float64(len(all))/loadEnd.Sub(loadStart).Seconds(), maxLatency.Round(time.Millisecond))
	t.Logf("restart: began at +%v of the load; pg_isready failing from %s to %s (PostgreSQL down %v); command returned %s (times relative to the restart command)",
		rs.begin.Sub(loadStart).Round(time.Millisecond), rel(rs.down), rel(rs.up), rs.up.Sub(rs.down).Round(time.Millisecond), rel(rs.cmdDone))
	t.Logf("acknowledged: %d; failed: %d by code [%s] (a failed writer backs off %v)",
		len(acked), len(all)-len(acked), strings.Join(codeSummary, " "), pgrFailBackoff)
	if firstFail != nil {
		t.Logf("outage seen by writers: first failure %s, last failure %s (window %v)",
			rel(firstFail.end), rel(lastFail.end), lastFail.end.Sub(firstFail.end).Round(time.Millisecond))
	} else {
		t.Logf("outage seen by writers: no create failed (the restart did not reach a writer)")
	}
	if firstOKAfterFail != nil {
		t.Logf("first success after the first failure: %s (%v after the first failure)",
			rel(firstOKAfterFail.end), firstOKAfterFail.end.Sub(firstFail.end).Round(time.Millisecond))
	}
	if firstOKAfterReady != nil {
		t.Logf("time to first success after the restart (call started once pg_isready passed again): %v after PostgreSQL was back, %v after the restart command began",
			firstOKAfterReady.end.Sub(back).Round(time.Millisecond), firstOKAfterReady.end.Sub(rs.begin).Round(time.Millisecond))
	} else {
		t.Errorf("no create started after PostgreSQL was ready succeeded during the load: the service did not recover")
	}
	if len(badCode) > 0 {
		t.Errorf("%d creates failed with a code other than %v (first %d):\n%s",
			len(badCode), pgrCleanCodes, min(10, len(badCode)), strings.Join(badCode[:min(10, len(badCode))], "\n"))
	}
	if len(earlyFail) > 0 {
		t.Errorf("%d creates failed before the restart began (first: %s)", len(earlyFail), earlyFail[0])
	}

	// The service answers normally after the restart, without being
	// restarted itself.
	after := provCreate(t, s, key, pgrTenant, "after-restart", pgrProvider("after-restart"))
	if got := provGet(t, s, key, after.GetName()); !proto.Equal(got, after) {
		t.Errorf("GetProvider(after-restart) = %v, want %v", got, after)
	}
	acked["warmup"] = nil
	acked["after-restart"] = after
	attempted["warmup"], attempted["after-restart"] = codes.OK, codes.OK

	// Every acknowledged create reads back through the API, exactly as
	// acknowledged.
	lost, mismatched := pgrCheckAcked(t, s, key, acked)
	if len(lost) > 0 {
		sort.Strings(lost)
		t.Errorf("LOST WRITES: %d acknowledged creates are not readable (first %d):\n%s",
			len(lost), min(10, len(lost)), strings.Join(lost[:min(10, len(lost))], "\n"))
	}
	if len(mismatched) > 0 {
		t.Errorf("%d acknowledged creates read back differently (first %d):\n%s",
			len(mismatched), min(5, len(mismatched)), strings.Join(mismatched[:min(5, len(mismatched))], "\n"))
	}

	// And straight from the test's schema.
	db := s.Store().DB()
	ackedIDs := make([]string, 0, len(acked))
	for id := range acked {
		ackedIDs = append(ackedIDs, id)
	}
	sort.Strings(ackedIDs)
	var inDB int64
	for chunk := range slices.Chunk(ackedIDs, 500) {
		var n int64
		if err := db.Raw("SELECT count(*) FROM providers WHERE tenant_id = ? AND id IN ?", pgrTenant, chunk).Scan(&n).Error; err != nil {
			t.Fatalf("counting acknowledged provider rows: %v", err)
		}
		inDB += n
	}
	if inDB != int64(len(ackedIDs)) {
		t.Errorf("LOST WRITES: %d of %d acknowledged providers have a row in the providers table", inDB, len(ackedIDs))
	}

	// Every row — acknowledged or not — is whole: it belongs to an attempted
	// create and decrypts through GetProvider with the values sent.
	var rowIDs []string
	if err := db.Raw("SELECT id FROM providers WHERE tenant_id = ? ORDER BY id", pgrTenant).Scan(&rowIDs).Error; err != nil {
		t.Fatalf("listing provider rows: %v", err)
	}
	var phantom, unacked []string
	for _, id := range rowIDs {
		code, ok := attempted[id]
		switch {
		case !ok:
			phantom = append(phantom, id)
		case code != codes.OK:
			unacked = append(unacked, fmt.Sprintf("%s (create answered %v)", id, code))
		}
	}
	if len(phantom) > 0 {
		t.Errorf("%d provider rows belong to no create the test sent: %q", len(phantom), phantom[:min(10, len(phantom))])
	}
	unreadable := pgrCheckRows(t, s, key, rowIDs)
	if len(unreadable) > 0 {
		t.Errorf("HALF-WRITTEN ROWS: %d provider rows do not read back whole through GetProvider (first %d):\n%s",
			len(unreadable), min(10, len(unreadable)), strings.Join(unreadable[:min(10, len(unreadable))], "\n"))
	}

	// The audit log holds a provider.created event for every acknowledged
	// create, through the API and in the table.
	var auditRows []string
	if err := db.Raw("SELECT provider_id FROM audit_events WHERE tenant_id = ? AND event_type = ?", pgrTenant, "provider.created").Scan(&auditRows).Error; err != nil {
		t.Fatalf("reading audit_events: %v", err)
	}
	auditDB := map[string]int{}
	for _, id := range auditRows {
		auditDB[id]++
	}
	auditAPI := map[string]int{}
	tok := ""
	for page := 0; ; page++ {
		if page > 10000 {
			t.Fatal("ListAuditEvents does not terminate")
		}
		resp, err := s.Audit().ListAuditEvents(Ctx(t, key), &mcpauthv1.ListAuditEventsRequest{
			Parent: "tenants/" + pgrTenant, EventType: "provider.created", PageSize: 500, PageToken: tok})
		if err != nil {
			t.Fatalf("ListAuditEvents (page %d): %v", page, err)
		}
		for _, e := range resp.GetAuditEvents() {
			auditAPI[strings.TrimPrefix(e.GetProvider(), "tenants/"+pgrTenant+"/providers/")]++
		}
		if tok = resp.GetNextPageToken(); tok == "" {
			break
		}
	}
	var noAuditDB, noAuditAPI, dupAudit []string
	for _, id := range ackedIDs {
		if auditDB[id] == 0 {
			noAuditDB = append(noAuditDB, id)
		}
		if auditAPI[id] == 0 {
			noAuditAPI = append(noAuditAPI, id)
		}
	}
	auditForUnacked := 0
	for id, n := range auditDB {
		if n > 1 {
			dupAudit = append(dupAudit, fmt.Sprintf("%s×%d", id, n))
		}
		if _, ok := acked[id]; !ok {
			auditForUnacked++
		}
	}
	sort.Strings(dupAudit)
	auditFailures := pgrLogLines(s.Logs.String(), "audit write failed")
	t.Logf("audit: %d provider.created rows (%d via ListAuditEvents) for %d acknowledged creates; %d events for unacknowledged creates; %d duplicated; %d \"audit write failed\" log lines",
		len(auditRows), pgrSum(auditAPI), len(ackedIDs), auditForUnacked, len(dupAudit), len(auditFailures))
	t.Logf("rows: %d provider rows in the tenant, %d of them from creates that were not acknowledged (ambiguous commits, allowed if whole)",
		len(rowIDs), len(unacked))
	if len(unacked) > 0 {
		t.Logf("unacknowledged rows: %s", strings.Join(unacked[:min(10, len(unacked))], ", "))
	}
	if len(noAuditDB) > 0 {
		t.Errorf("AUDIT GAP: %d acknowledged creates have no provider.created row in audit_events (first %d: %q); service log:\n%s",
			len(noAuditDB), min(10, len(noAuditDB)), noAuditDB[:min(10, len(noAuditDB))], strings.Join(auditFailures[:min(5, len(auditFailures))], "\n"))
	}
	if len(noAuditAPI) > 0 {
		t.Errorf("AUDIT GAP: %d acknowledged creates have no provider.created event in ListAuditEvents (first %d: %q)",
			len(noAuditAPI), min(10, len(noAuditAPI)), noAuditAPI[:min(10, len(noAuditAPI))])
	}
	if len(dupAudit) > 0 {
		t.Logf("note: %d providers have more than one provider.created event: %q", len(dupAudit), dupAudit[:min(10, len(dupAudit))])
	}
}

// pgrProvider is a valid provider whose unique fields and secrets derive
// from id, using every ciphertext column.
func pgrProvider(id string) *mcpauthv1.Provider {
	p := provNewProvider(id)
	p.Headers = map[string]string{"x-api-key": "key-" + id}
	p.OauthClient = &mcpauthv1.OAuthClient{ClientId: "client-" + id, ClientSecret: "secret-" + id}
	return p
}

// pgrWantView checks the fields of a provider view that derive from id,
// including those only a successful decryption can produce.
func pgrWantView(id string, v *mcpauthv1.Provider) error {
	want := pgrProvider(id)
	switch {
	case v.GetName() != "tenants/"+pgrTenant+"/providers/"+id:
		return fmt.Errorf("name %q", v.GetName())
	case v.GetDisplayName() != want.GetDisplayName() || v.GetServerIdentifier() != want.GetServerIdentifier():
		return fmt.Errorf("display name %q, server identifier %q", v.GetDisplayName(), v.GetServerIdentifier())
	case v.GetMaskedServerUrl() != "https://mcp-"+id+".example.com/******":
		return fmt.Errorf("masked server URL %q", v.GetMaskedServerUrl())
	case len(v.GetHeaderInfo()) != 1 || v.GetHeaderInfo()[0].GetName() != "X-Api-Key" || !v.GetHeaderInfo()[0].GetValueSet():
		return fmt.Errorf("header info %v", v.GetHeaderInfo())
	case v.GetOauthClient().GetClientId() != "client-"+id || !v.GetOauthClient().GetClientSecretSet():
		return fmt.Errorf("oauth client %v", v.GetOauthClient())
	case v.GetEtag() != `"v1"`:
		return fmt.Errorf("etag %s", v.GetEtag())
	}
	return nil
}

// pgrParallel runs fn over ids on 16 workers and returns what fn reported.
func pgrParallel(ids []string, fn func(id string) string) []string {
	var mu sync.Mutex
	var out []string
	ch := make(chan string)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ch {
				if msg := fn(id); msg != "" {
					mu.Lock()
					out = append(out, msg)
					mu.Unlock()
				}
			}
		}()
	}
	for _, id := range ids {
		ch <- id
	}
	close(ch)
	wg.Wait()
	sort.Strings(out)
	return out
}

// pgrGet reads one provider of the test tenant through the API.
func pgrGet(s *Service, key, id string) (*mcpauthv1.Provider, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	resp, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: "tenants/" + pgrTenant + "/providers/" + id})
	if err != nil {
		return nil, err
	}
	return resp.GetProvider(), nil
}

// pgrCheckAcked reads every acknowledged provider back; lost lists those
// that cannot be read, mismatched those that differ from the acknowledged
// view (a nil view is checked against the values sent only).
func pgrCheckAcked(tb testing.TB, s *Service, key string, acked map[string]*mcpauthv1.Provider) (lost, mismatched []string) {
	tb.Helper()
	ids := make([]string, 0, len(acked))
	for id := range acked {
		ids = append(ids, id)
	}
	var mu sync.Mutex
	lost = pgrParallel(ids, func(id string) string {
		got, err := pgrGet(s, key, id)
		if err != nil {
			return fmt.Sprintf("%s: %v", id, err)
		}
		var msg string
		if want := acked[id]; want != nil && !proto.Equal(got, want) {
			msg = fmt.Sprintf("%s: got %v, acknowledged %v", id, got, want)
		} else if err := pgrWantView(id, got); err != nil {
			msg = fmt.Sprintf("%s: %v", id, err)
		}
		if msg != "" {
			mu.Lock()
			mismatched = append(mismatched, msg)
			mu.Unlock()
		}
		return ""
	})
	return lost, mismatched
}

// pgrCheckRows reads every provider row of the tenant through the API and
// reports those that do not come back whole.
func pgrCheckRows(tb testing.TB, s *Service, key string, ids []string) []string {
	tb.Helper()
	return pgrParallel(ids, func(id string) string {
		got, err := pgrGet(s, key, id)
		if err != nil {
			return fmt.Sprintf("%s: GetProvider: %v", id, err)
		}
		if err := pgrWantView(id, got); err != nil {
			return fmt.Sprintf("%s: %v", id, err)
		}
		return ""
	})
}

// pgrReady reports whether pg_isready accepts 127.0.0.1:5432.
func pgrReady() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432").Run() == nil
}

// pgrEnsureUp starts the PostgreSQL cluster if it is not accepting
// connections, so a failed run does not leave the machine without it.
func pgrEnsureUp(tb testing.TB) {
	tb.Helper()
	if pgrReady() {
		return
	}
	out, err := exec.Command("bash", "-c", pgrStartScript).CombinedOutput()
	if err != nil {
		tb.Errorf("starting PostgreSQL after the fault test: %v\n%s", err, out)
	}
	deadline := time.Now().Add(pgrReadyTimeout)
	for time.Now().Before(deadline) {
		if pgrReady() {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	tb.Errorf("PostgreSQL is still not ready after the fault test; start it with: %s", pgrStartScript)
}

// pgrLogLines returns the service log lines containing substr.
func pgrLogLines(logs, substr string) []string {
	var out []string
	for line := range strings.Lines(logs) {
		if strings.Contains(line, substr) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

func pgrSum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
