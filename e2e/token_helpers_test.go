package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// tokMaxConns caps each replica's PostgreSQL connections in these tests.
const tokMaxConns = 4

// tokOptions configure a tokCluster.
type tokOptions struct {
	// AS configures the authorization server (a real fosite server that
	// rotates refresh tokens and rejects reuse unless told otherwise).
	AS testauthz.AuthServerOptions
	// Replicas is how many mcpauth processes share the database and Redis;
	// default 1.
	Replicas int
	// Env adds MCPAUTH_* settings to every replica.
	Env map[string]string
	// Tenant and ID name the provider; default acme/docs.
	Tenant, ID string
	// DefaultPool keeps the service's own database pool size (benchmarks)
	// instead of capping it at tokMaxConns.
	DefaultPool bool
	// NewAS, when set, starts the authorization server (for example behind
	// a fault proxy) instead of testauthz.NewAuthServer.
	NewAS func(tb testing.TB, opt testauthz.AuthServerOptions) *testauthz.AuthServer
	// RedisURL, when set, is the replicas' Redis (a private instance a
	// fault test stops and restarts) instead of the shared one.
	RedisURL string
	// DSN, when set, is the replicas' database (for example through a fault
	// proxy) instead of a fresh schema on the shared PostgreSQL.
	DSN string
}

// tokCluster is one provider authorized end to end against a real
// authorization server, served by mcpauth replicas that share one
// PostgreSQL schema and one Redis key prefix, as replicas in production
// share a database and a Redis.
type tokCluster struct {
	AS       *testauthz.AuthServer
	MCP      *testauthz.MCPServer
	Replicas []*Service
	// Key is an API key every replica accepts (all tenants, all permissions).
	Key string
	// Tenant, ID and Name identify the authorized provider.
	Tenant, ID, Name string
	// Redis is a client on the replicas' Redis, and Prefix the key prefix
	// they use, so tests can inspect and plant their locks.
	Redis  redis.UniversalClient
	Prefix string
	// Env is the replicas' shared MCPAUTH_* configuration (master keys,
	// database, Redis, callers file), for starting more of them, for
	// example as the real binary.
	Env map[string]string
}

// tokStart starts the authorization server, an MCP server protected by it,
// o.Replicas mcpauth replicas on PostgreSQL and Redis, and authorizes the
// provider through replica 0 with a user agent.
func tokStart(tb testing.TB, o tokOptions) *tokCluster {
	tb.Helper()
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Tenant == "" {
		o.Tenant = "acme"
	}
	if o.ID == "" {
		o.ID = "docs"
	}
	o.AS.DCR = true
	c := &tokCluster{Tenant: o.Tenant, ID: o.ID}
	if o.NewAS != nil {
		c.AS = o.NewAS(tb, o.AS)
	} else {
		c.AS = testauthz.NewAuthServer(tb, o.AS)
	}
	c.MCP = testauthz.NewMCPServer(tb, testauthz.MCPServerOptions{Auth: c.AS})
	var redisURL *url.URL
	var err error
	if o.RedisURL != "" {
		c.Prefix = "mcpauth_fault:"
		redisURL, err = url.Parse(o.RedisURL)
		if err != nil {
			tb.Fatal(err)
		}
		opts, err := redis.ParseURL(o.RedisURL)
		if err != nil {
			tb.Fatal(err)
		}
		c.Redis = redis.NewClient(opts)
		tb.Cleanup(func() { _ = c.Redis.Close() })
	} else {
		c.Redis, c.Prefix = testenv.Redis(tb)
		if redisURL, err = url.Parse(testenv.RedisURL(tb)); err != nil {
			tb.Fatal(err)
		}
	}
	q := redisURL.Query()
	q.Set("prefix", c.Prefix)
	redisURL.RawQuery = q.Encode()

	// Replicas share configuration, not disks: one master key, one callers file.
	master := make([]byte, 32)
	if _, err := rand.Read(master); err != nil {
		tb.Fatal(err)
	}
	fc, key := NewCaller(tb, "token-tests", []string{"*"}, caller.ProvidersRead, caller.ProvidersWrite,
		caller.Authorize, caller.TokensRead, caller.ToolsCall, caller.AuditRead)
	c.Key = key
	env := map[string]string{
		"MCPAUTH_EGRESS_ALLOW": "127.0.0.1",
		"MCPAUTH_MASTER_KEYS":  "1:" + base64.StdEncoding.EncodeToString(master),
		"MCPAUTH_LOG_LEVEL":    "info",
	}
	for k, v := range o.Env {
		env[k] = v
	}
	dsn := o.DSN
	if dsn == "" {
		dsn = testenv.PostgresDSN(tb)
	}
	for range o.Replicas {
		s := Start(tb, Options{DSN: dsn, RedisURL: redisURL.String(), Env: env,
			Callers: &caller.File{Callers: []caller.FileCaller{fc}}})
		if c.Env == nil {
			c.Env = map[string]string{"MCPAUTH_DATABASE_URL": dsn, "MCPAUTH_REDIS_URL": redisURL.String(),
				"MCPAUTH_CALLERS_FILE": filepath.Join(s.DataDir, "callers.json")}
			for k, v := range env {
				c.Env[k] = v
			}
		}
		// Each replica's pool defaults to 20 connections: three replicas and
		// the parallel tests of this and other packages would exceed
		// PostgreSQL's default max_connections (100), and callers would get
		// "too many clients" as UNAVAILABLE. A few connections suffice.
		if !o.DefaultPool {
			sqlDB, err := s.Store().DB().DB()
			if err != nil {
				tb.Fatal(err)
			}
			sqlDB.SetMaxOpenConns(tokMaxConns)
		}
		c.Replicas = append(c.Replicas, s)
	}
	c.Name = c.authorize(tb, c.Replicas[0], c.Tenant, c.ID, c.MCP.URL())
	return c
}

// authorize creates provider tenant/id for the MCP server at mcpURL on s
// and runs the authorization with a fresh user agent. It returns the
// provider's name.
func (c *tokCluster) authorize(tb testing.TB, s *Service, tenant, id, mcpURL string) string {
	tb.Helper()
	name := createProvider(tb, s, c.Key, tenant, id, mcpURL, nil)
	start, err := s.OAuth().StartAuthorization(Ctx(tb, c.Key), &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		tb.Fatalf("StartAuthorization: %v", err)
	}
	code, body, final := NewBrowser(tb).Open(tb, start.GetAuthorizationUrl())
	if code != 200 || !strings.Contains(body, "Authorization complete") {
		tb.Fatalf("authorizing %s: final page %s: %d %s", name, final, code, body)
	}
	return name
}

// ctx is a request context carrying the cluster's API key.
func (c *tokCluster) ctx(tb testing.TB) context.Context {
	tb.Helper()
	return Ctx(tb, c.Key)
}

// get calls GetAccessToken for the cluster's provider on replica r.
func (c *tokCluster) get(ctx context.Context, r int) (*mcpauthv1.GetAccessTokenResponse, error) {
	return c.Replicas[r].OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: c.Name})
}

// mustGet is get that fails the test on error.
func (c *tokCluster) mustGet(tb testing.TB, r int) *mcpauthv1.GetAccessTokenResponse {
	tb.Helper()
	tok, err := c.get(c.ctx(tb), r)
	if err != nil {
		tb.Fatalf("GetAccessToken on replica %d: %v", r, err)
	}
	return tok
}

// status returns the provider's authorization status.
func (c *tokCluster) status(tb testing.TB) *mcpauthv1.GetAuthorizationStatusResponse {
	tb.Helper()
	st, err := c.Replicas[0].OAuth().GetAuthorizationStatus(c.ctx(tb), &mcpauthv1.GetAuthorizationStatusRequest{Name: c.Name})
	if err != nil {
		tb.Fatalf("GetAuthorizationStatus: %v", err)
	}
	return st
}

// waitDue polls GetAuthorizationStatus until the stored access token is
// within margin of its expiry (margin 0: expired), and returns the expiry.
// This waits on the service's own clock condition rather than sleeping a
// guessed duration.
func (c *tokCluster) waitDue(tb testing.TB, margin time.Duration) time.Time {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		st := c.status(tb)
		if st.GetExpireTime() == nil {
			tb.Fatalf("the provider's token has no expiry: %v", st)
		}
		exp := st.GetExpireTime().AsTime()
		if !time.Now().Before(exp.Add(-margin)) {
			return exp
		}
		if time.Now().After(deadline) {
			tb.Fatalf("token expiring at %s never became due", exp)
		}
		time.Sleep(min(10*time.Millisecond, time.Until(exp.Add(-margin))+time.Millisecond))
	}
}

// lockKey is the Redis key of the provider's refresh lock, as
// statestore.Redis lays it out for the service's lock name
// "refresh:<tenant>/<provider>".
func (c *tokCluster) lockKey() string {
	return c.Prefix + "lock:{refresh:" + c.Tenant + "/" + c.ID + "}"
}

// tokRefreshRequests returns the refresh_token grant requests the server
// received, including those it never answered (hung) or answered with an
// injected fault.
func tokRefreshRequests(as *testauthz.AuthServer) []testauthz.RecordedRequest {
	var out []testauthz.RecordedRequest
	for _, r := range as.RequestsTo(as.Path("/token")) {
		if r.Form.Get("grant_type") == "refresh_token" {
			out = append(out, r)
		}
	}
	return out
}

// tokChain checks the authorization server's whole history (tokChains)
// and that it holds exactly one authorization's chain, which it returns;
// element 0 is the authorization's.
func tokChain(tb testing.TB, as *testauthz.AuthServer) []testauthz.Issuance {
	tb.Helper()
	chains := tokChains(tb, as)
	if len(chains) != 1 {
		tb.Fatalf("the authorization server issued tokens for %d authorizations, want 1", len(chains))
	}
	return chains[0]
}

// tokChains checks the authorization server's whole history: the tokens it
// issued form one chain of refreshes per authorization, each refresh
// presenting the refresh token issued just before it in its chain (so no
// refresh token was used twice and no generation refreshed twice), none
// rejected as a reuse, and each sent only once the generation it refreshes
// had come due (so a second refresh is one for the next expiry, never a
// duplicate for this one). It returns the chains in the order of their
// authorizations; element 0 of each is the authorization's.
//
// The due check follows from mcpauth's rule, not from how fast anything
// ran: it refreshes when less than a quarter of a token's lifetime is left
// (at most MCPAUTH_REFRESH_MARGIN_MAX), the lifetime counted from when it
// stored the token, after the server answered with expires_in. So no
// refresh of a generation can reach the server before the server's answer
// plus three quarters of expires_in; a loaded machine only makes it later.
//
// It waits for every refresh request to end in a token or a reuse
// rejection, so it is not for tests whose server fails refreshes on
// purpose (SetTokenStatus, hung requests, expired refresh tokens).
func tokChains(tb testing.TB, as *testauthz.AuthServer) [][]testauthz.Issuance {
	tb.Helper()
	var issued []testauthz.Issuance
	// A caller served a still-valid token may have left its refresh
	// running: wait until every refresh request that arrived is answered.
	tokWait(tb, "every refresh request to be answered", time.Minute, func() bool {
		issued = as.Issued()
		refreshed := 0
		for _, is := range issued {
			if is.Grant == "refresh_token" {
				refreshed++
			}
		}
		return len(tokRefreshRequests(as)) == refreshed+as.ReuseRejections()
	})
	if n := as.ReuseRejections(); n != 0 {
		tb.Errorf("the authorization server rejected %d reused refresh tokens (and revoked the family)", n)
	}
	var chains [][]testauthz.Issuance
	for i, is := range issued {
		switch is.Grant {
		case "authorization_code":
			chains = append(chains, []testauthz.Issuance{is})
			continue
		case "refresh_token":
		default:
			tb.Fatalf("token %d was issued for a %s grant, not an authorization or a refresh", i, is.Grant)
		}
		k := slices.IndexFunc(chains, func(ch []testauthz.Issuance) bool {
			return ch[len(ch)-1].RefreshToken == is.Presented
		})
		if k < 0 {
			tb.Errorf("token %d: the refresh did not present the refresh token of any chain's latest generation: a generation refreshed twice", i)
			continue
		}
		prev, gen := chains[k][len(chains[k])-1], len(chains[k])
		if due := prev.Issued.Add(prev.ExpiresIn - prev.ExpiresIn/4); is.Requested.Before(due) {
			tb.Errorf("refresh %d of chain %d reached the server %s after generation %d was issued with expires_in %s, before it could be due: a second refresh for one expiry",
				gen, k, is.Requested.Sub(prev.Issued), gen-1, prev.ExpiresIn)
		}
		chains[k] = append(chains[k], is)
	}
	if len(chains) == 0 {
		tb.Fatal("the authorization server issued no token for an authorization")
	}
	return chains
}

// tokGenerations fails unless every caller succeeded with an access token
// of chain's generation from or a later one (a token the server issued,
// and no earlier generation's), and returns how many callers got each
// generation.
func tokGenerations(tb testing.TB, results []tokResult, chain []testauthz.Issuance, from int) map[int]int {
	tb.Helper()
	gen := map[string]int{}
	for i, is := range chain {
		gen[is.AccessToken] = i
	}
	got := map[int]int{}
	for _, r := range results {
		if r.err != nil {
			tb.Fatalf("a caller on replica %d: %v", r.replica, r.err)
		}
		g, ok := gen[r.tok.GetAccessToken()]
		switch {
		case !ok:
			tb.Fatalf("replica %d returned an access token the server never issued for this authorization", r.replica)
		case g < from:
			tb.Fatalf("replica %d returned the access token of generation %d, want generation %d or later", r.replica, g, from)
		}
		got[g]++
	}
	return got
}

// tokWait polls cond until it holds, failing the test after timeout.
func tokWait(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tokResult is the outcome of one GetAccessToken call.
type tokResult struct {
	replica int
	tok     *mcpauthv1.GetAccessTokenResponse
	err     error
	elapsed time.Duration
}

// tokCallers starts n GetAccessToken callers, caller i on replica
// replicas[i%len(replicas)], all blocked on a start barrier. Closing the
// returned channel releases them at once; the results arrive on the
// returned channel, which has room for all of them.
func (c *tokCluster) tokCallers(tb testing.TB, n int, replicas []int, timeout time.Duration) (chan struct{}, <-chan tokResult) {
	tb.Helper()
	start := make(chan struct{})
	out := make(chan tokResult, n)
	base := c.ctx(tb)
	for i := range n {
		r := replicas[i%len(replicas)]
		go func() {
			ctx, cancel := context.WithTimeout(base, timeout)
			defer cancel()
			<-start
			t0 := time.Now()
			tok, err := c.get(ctx, r)
			out <- tokResult{replica: r, tok: tok, err: err, elapsed: time.Since(t0)}
		}()
	}
	return start, out
}

// tokCollect reads n results, failing the test if they take over a minute.
func tokCollect(tb testing.TB, results <-chan tokResult, n int) []tokResult {
	tb.Helper()
	var out []tokResult
	timeout := time.After(time.Minute)
	for range n {
		select {
		case r := <-results:
			out = append(out, r)
		case <-timeout:
			tb.Fatalf("only %d of %d callers returned within a minute", len(out), n)
		}
	}
	return out
}

// tokErrorInfo checks that err is a gRPC status with code and returns its
// google.rpc.ErrorInfo detail (failing when there is none).
func tokErrorInfo(tb testing.TB, err error, code codes.Code) *errdetails.ErrorInfo {
	tb.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		tb.Fatalf("error %v, want code %s", err, code)
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	tb.Fatalf("error %v carries no ErrorInfo", err)
	return nil
}

// tokAudit lists the tenant's audit events of one type for the provider.
func (c *tokCluster) tokAudit(tb testing.TB, eventType string) []*mcpauthv1.AuditEvent {
	tb.Helper()
	resp, err := c.Replicas[0].Audit().ListAuditEvents(c.ctx(tb), &mcpauthv1.ListAuditEventsRequest{
		Parent: "tenants/" + c.Tenant, Provider: c.Name, EventType: eventType, PageSize: 500})
	if err != nil {
		tb.Fatalf("ListAuditEvents: %v", err)
	}
	return resp.GetAuditEvents()
}

// tokMonitorLine is one command Redis executed, as MONITOR shows it.
type tokMonitorLine struct {
	// At is when Redis executed it, by the Redis server's clock (this
	// machine's wall clock).
	At time.Time
	// Script is true for a command a Lua script ran ("[0 lua]").
	Script bool
	// Cmd is the command name in lower case.
	Cmd string
}

// tokMonitor records the commands Redis executes that contain a string,
// in the order Redis executed them.
type tokMonitor struct {
	mu    sync.Mutex
	lines []tokMonitorLine
}

// Lines returns the commands recorded so far.
func (m *tokMonitor) Lines() []tokMonitorLine {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.lines)
}

// tokRedisMonitor streams the commands Redis executes (MONITOR) on its own
// connection and records those whose line contains match, ignoring case.
// It is how a test learns what another process did with a lock, and when,
// the way Gitaly's WaitForBlockedQuery watches pg_stat_activity.
func tokRedisMonitor(tb testing.TB, match string) *tokMonitor {
	tb.Helper()
	opts, err := redis.ParseURL(testenv.RedisURL(tb))
	if err != nil {
		tb.Fatal(err)
	}
	conn, err := net.Dial("tcp", opts.Addr)
	if err != nil {
		tb.Fatalf("redis monitor: %v", err)
	}
	tb.Cleanup(func() { conn.Close() })
	rd := bufio.NewReader(conn)
	// send writes one inline command and expects +OK.
	send := func(words ...string) {
		if _, err := fmt.Fprintf(conn, "%s\r\n", strings.Join(words, " ")); err != nil {
			tb.Fatalf("redis monitor: %v", err)
		}
		line, err := rd.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != "+OK" {
			tb.Fatalf("redis monitor: %s: %q %v", words[0], strings.TrimSpace(line), err)
		}
	}
	if opts.Password != "" {
		user := opts.Username
		if user == "" {
			user = "default"
		}
		send("AUTH", tokQuote(user), tokQuote(opts.Password))
	}
	// MONITOR answers +OK before streaming: commands after it are seen.
	send("MONITOR")
	m := &tokMonitor{}
	match = strings.ToLower(match)
	go func() {
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			if !strings.Contains(strings.ToLower(line), match) {
				continue
			}
			l, ok := tokParseMonitor(line)
			if !ok {
				continue
			}
			m.mu.Lock()
			m.lines = append(m.lines, l)
			m.mu.Unlock()
		}
	}()
	return m
}

// tokParseMonitor reads a MONITOR line: `1700000000.123456 [0
// 127.0.0.1:5000] "cmd" "arg"...`, or `[0 lua]` for a script's command.
func tokParseMonitor(line string) (tokMonitorLine, bool) {
	ts, rest, ok := strings.Cut(line, " ")
	if !ok {
		return tokMonitorLine{}, false
	}
	sec, usec, ok := strings.Cut(ts, ".")
	var s, us int64
	if _, err := fmt.Sscan(sec, &s); err != nil || !ok {
		return tokMonitorLine{}, false
	}
	if _, err := fmt.Sscan(usec, &us); err != nil {
		return tokMonitorLine{}, false
	}
	src, args, ok := strings.Cut(rest, "] ")
	if !ok {
		return tokMonitorLine{}, false
	}
	cmd, _, _ := strings.Cut(strings.TrimPrefix(args, `"`), `"`)
	return tokMonitorLine{At: time.Unix(s, us*1000), Script: strings.HasSuffix(src, " lua"), Cmd: strings.ToLower(cmd)}, true
}

// tokQuote quotes s as a word of an inline Redis command.
func tokQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// tokSameToken checks that every result succeeded with one and the same
// access token, and returns it.
func tokSameToken(tb testing.TB, results []tokResult) string {
	tb.Helper()
	var tok string
	var errs []error
	for _, r := range results {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("replica %d: %w", r.replica, r.err))
			continue
		}
		switch {
		case tok == "":
			tok = r.tok.GetAccessToken()
		case r.tok.GetAccessToken() != tok:
			tb.Errorf("replica %d returned a different access token than another caller", r.replica)
		}
	}
	if len(errs) > 0 {
		tb.Fatalf("%d of %d callers failed: %v", len(errs), len(results), errors.Join(errs...))
	}
	return tok
}
