// Package app wires mcpauth together: configuration in, a running gRPC
// server and HTTP gateway out. cmd/mcpauthd calls it; end-to-end tests use
// it to run the real service on real sockets.
package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"

	"github.com/mcpauth/mcpauth/api/openapi"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/config"
	"github.com/mcpauth/mcpauth/egress"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/mcpclient"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/server"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/authflow"
	"github.com/mcpauth/mcpauth/service/connections"
	"github.com/mcpauth/mcpauth/service/grants"
	"github.com/mcpauth/mcpauth/service/providers"
	"github.com/mcpauth/mcpauth/service/readlog"
	"github.com/mcpauth/mcpauth/service/tools"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/service/webhooks"
	"github.com/mcpauth/mcpauth/statestore"
	"github.com/mcpauth/mcpauth/telemetry"
	"github.com/mcpauth/mcpauth/version"
	"github.com/mcpauth/mcpauth/webhook"
	"github.com/mcpauth/mcpauth/workload"
)

// App is one running mcpauth process.
type App struct {
	cfg        *config.Config
	log        *slog.Logger
	store      *repository.Store
	cached     *repository.CachedReads
	keys       *keyring.Keyring
	flows      statestore.Store
	guard      *egress.Guard
	metrics    *metrics.Metrics
	health     *health.Server
	grpc       *grpc.Server
	mem        *memListener
	http       *http.Server
	gwConn     *grpc.ClientConn
	mcp        *mcpclient.Client
	refresher  *grants.Refresher
	tokens     *grants.Service
	auditor    *audit.Auditor
	reads      *readlog.Aggregator
	dispatcher *webhooks.Dispatcher
	retention  *audit.Retention
	broadcast  *statestore.Broadcast
	tlsConfig  *tls.Config
	metricsSrv *http.Server
	callers    *caller.Reloader
	poller     *server.HealthPoller
	// tracer is the tracer provider; nil when tracing is off.
	tracer        trace.TracerProvider
	traceShutdown func(context.Context) error
}

// grpcTLSConfig is the gRPC port's TLS: the HTTP port's, plus client
// certificate verification when MCPAUTH_TLS_CLIENT_CA_FILE is set (mTLS
// callers). The HTTP port never asks browsers for certificates.
func grpcTLSConfig(cfg *config.Config, base *tls.Config) (*tls.Config, error) {
	if cfg.TLSClientCAFile == "" {
		return base, nil
	}
	pem, err := os.ReadFile(cfg.TLSClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("MCPAUTH_TLS_CLIENT_CA_FILE: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("MCPAUTH_TLS_CLIENT_CA_FILE %q holds no PEM certificate", cfg.TLSClientCAFile)
	}
	c := base.Clone()
	c.ClientCAs = pool
	c.ClientAuth = tls.VerifyClientCertIfGiven
	if cfg.TLSClientAuth == "require" {
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// Option adjusts New.
type Option func(*options)

type options struct {
	tracer trace.TracerProvider
}

// WithTracerProvider traces with tp instead of the exporter the OTEL_*
// environment variables configure (tests record spans with it).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tracer = tp }
}

// errDevKeyShared refuses the generated development key on a database that
// replicas can share: each replica would generate its own key under the same
// id, and each would fail on the rows of the others.
var errDevKeyShared = errors.New("no master key configured and the database is PostgreSQL, which replicas can share: " +
	"a development key generated in each replica's data directory would differ from the others'; " +
	"set MCPAUTH_MASTER_KEYS or MCPAUTH_MASTER_KEY_FILE (generate one with 'mcpauthd new-master-key') and give every replica the same keys")

// LoadKeyring reads the master keys from MCPAUTH_MASTER_KEYS, else from
// MCPAUTH_MASTER_KEY_FILE, else from a dev key file generated in the data
// directory (with a loud warning: fine for a laptop, never for production).
// The dev key is refused when the database is PostgreSQL.
func LoadKeyring(cfg *config.Config, log *slog.Logger) (*keyring.Keyring, error) {
	spec := cfg.MasterKeys.Reveal()
	switch {
	case spec != "":
	case cfg.MasterKeyFile != "":
		raw, err := os.ReadFile(cfg.MasterKeyFile)
		if err != nil {
			return nil, fmt.Errorf("reading MCPAUTH_MASTER_KEY_FILE: %w", err)
		}
		spec = string(raw)
	case repository.IsPostgres(cfg.DatabaseDSN()):
		return nil, errDevKeyShared
	default:
		path := filepath.Join(cfg.DataDir, "master.key")
		s, created, err := keyring.LoadOrCreateFile(path)
		if err != nil {
			return nil, fmt.Errorf("dev master key: %w", err)
		}
		spec = s
		log.Warn("USING A DEVELOPMENT MASTER KEY stored next to the data: set MCPAUTH_MASTER_KEYS or MCPAUTH_MASTER_KEY_FILE in production",
			"path", path, "created", created)
	}
	k, err := keyring.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("master keys: %w", err)
	}
	return k, nil
}

// OpenStore opens and migrates the database.
func OpenStore(ctx context.Context, cfg *config.Config) (*repository.Store, error) {
	if cfg.DatabaseURL.IsZero() {
		if err := prepareDataDir(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	st, err := repository.Open(ctx, cfg.DatabaseDSN(), repository.Options{MaxOpenConns: cfg.DatabaseMaxConns})
	if err != nil {
		return nil, err
	}
	if cfg.DatabaseURL.IsZero() {
		// The SQLite file holds only ciphertext, but keep it private anyway.
		for _, suffix := range []string{"", "-wal", "-shm"} {
			_ = os.Chmod(cfg.DatabaseDSN()+suffix, 0o600)
		}
	}
	if err := st.Migrate(ctx); err != nil {
		st.Close()
		return nil, fmt.Errorf("migrating: %w", err)
	}
	return st, nil
}

// CheckKeyIdentity refuses to run when a configured master key id is known to
// the database with another key's check value (keyring.CheckValue): rows
// written under it would not open here, and rows written here would not open
// anywhere else. Ids the database does not know yet are recorded, once a
// provider row under the id, if any (a database written before key checks
// existed), opens with the key. Run it before anything writes rows. Errors
// name key ids only, never key material.
func CheckKeyIdentity(ctx context.Context, st *repository.Store, k *keyring.Keyring) error {
	known, err := st.KeyChecks(ctx)
	if err != nil {
		return err
	}
	checks := make(map[uint32]string, len(k.IDs()))
	for _, id := range k.IDs() {
		checks[id], _ = k.CheckValue(id)
		if _, ok := known[id]; ok {
			continue
		}
		row, err := st.AnyProviderUnderKey(ctx, id)
		if err != nil {
			return err
		}
		if row == nil {
			continue
		}
		if _, err := vault.OpenURL(k, row); err != nil {
			return fmt.Errorf("key id %d in the configured master keys does not open the rows written under it (provider %q of tenant %q): "+
				"configure the master keys the database was written with", id, row.ID, row.TenantID)
		}
	}
	mismatched, err := st.CheckKeys(ctx, checks)
	if err != nil {
		return err
	}
	const advice = ": configure the master keys the replicas sharing this database use (a new key needs a new id)"
	switch len(mismatched) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("key id %d in the configured master keys is not the key the database was written with"+advice, mismatched[0])
	default:
		return fmt.Errorf("key ids %v in the configured master keys are not the keys the database was written with"+advice, mismatched)
	}
}

// CheckKeysInUse refuses to run when a row is encrypted under a key the
// keyring lacks: retiring a key before re-encrypting would make rows
// unreadable.
func CheckKeysInUse(ctx context.Context, st *repository.Store, k *keyring.Keyring) error {
	usage, err := st.KeyUsage(ctx)
	if err != nil {
		return err
	}
	var missing []uint32
	for id, n := range usage {
		if n > 0 && !k.Has(id) {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("rows are encrypted under key ids %v that the configured master keys lack: add them back, run 'mcpauthd rotate-keys', then retire them", missing)
	}
	return nil
}

// AdminKeyPath is where the generated admin API key is kept when no
// callers file is configured.
func AdminKeyPath(cfg *config.Config) string { return filepath.Join(cfg.DataDir, "admin.key") }

// authenticator returns the callers: the callers file, followed by a
// Reloader (returned too, for Serve to watch), or the generated admin key.
func authenticator(cfg *config.Config, log *slog.Logger) (server.Authenticator, *caller.Reloader, error) {
	if cfg.CallersFile != "" {
		r, err := caller.NewReloader(cfg.CallersFile, log)
		return r, r, err
	}
	path := AdminKeyPath(cfg)
	a, created, err := caller.LoadOrCreateAdmin(path)
	if err != nil {
		return nil, nil, err
	}
	log.Warn("no MCPAUTH_CALLERS_FILE: one admin API key with every permission on every tenant is in use; "+
		"print it with 'mcpauthd print-admin-key' (same MCPAUTH_DATA_DIR)", "key_file", path, "created", created)
	return a, nil, nil
}

// needsDataDir reports whether anything is kept in the data directory: the
// SQLite database, the development master key or the generated admin key.
func needsDataDir(cfg *config.Config) bool {
	return cfg.DatabaseURL.IsZero() || cfg.CallersFile == "" || (cfg.MasterKeys.IsZero() && cfg.MasterKeyFile == "")
}

// prepareDataDir creates the data directory when missing and proves it is
// writable, so that a directory owned by another user fails here with the
// fix, not later with a bare "permission denied" on some file.
func prepareDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating data directory %q (MCPAUTH_DATA_DIR): %w; %s", dir, err, dataDirFix(dir))
	}
	f, err := os.CreateTemp(dir, ".write-check-*")
	if err != nil {
		return fmt.Errorf("data directory %q (MCPAUTH_DATA_DIR) is not writable: %w; %s", dir, err, dataDirFix(dir))
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func dataDirFix(dir string) string {
	return fmt.Sprintf("make it writable by uid %d (the container image runs as 65532: chown -R 65532:65532 %s), "+
		"or set MCPAUTH_DATA_DIR to a directory this user owns", os.Getuid(), dir)
}

// New builds every component from cfg. Nothing listens until Serve.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger, opts ...Option) (_ *App, err error) {
	a := &App{cfg: cfg, log: log, metrics: metrics.New(), health: health.NewServer()}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if err := a.setupTracing(ctx, o.tracer); err != nil {
		return nil, err
	}
	if needsDataDir(cfg) {
		if err := prepareDataDir(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	if a.keys, err = LoadKeyring(cfg, log); err != nil {
		return nil, err
	}
	if a.store, err = OpenStore(ctx, cfg); err != nil {
		return nil, err
	}
	if err := a.instrumentStore(); err != nil {
		return nil, err
	}
	if err := CheckKeyIdentity(ctx, a.store, a.keys); err != nil {
		return nil, err
	}
	if err := CheckKeysInUse(ctx, a.store, a.keys); err != nil {
		return nil, err
	}
	if cfg.RedisURL.IsZero() {
		a.flows = statestore.NewMemory()
		log.Info("flow state and refresh locks are in process memory: run one replica only, or set MCPAUTH_REDIS_URL")
	} else {
		// go-redis logs plain text to stderr unless told otherwise; the
		// service's log is JSON.
		statestore.RouteRedisLogs(log)
		r, err := statestore.NewRedisFromURL(cfg.RedisURL.Reveal())
		if err != nil {
			return nil, fmt.Errorf("MCPAUTH_REDIS_URL: %w", err)
		}
		a.flows = r
		if a.tracer != nil {
			if err := redisotel.InstrumentTracing(r.Client(), redisotel.WithTracerProvider(a.tracer),
				redisotel.WithDBStatement(false), redisotel.WithCallerEnabled(false)); err != nil {
				return nil, fmt.Errorf("tracing redis: %w", err)
			}
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := r.Ping(pctx); err != nil {
			log.Warn("redis not reachable at start; calls needing it answer UNAVAILABLE until it is", "err", err.Error())
		}
	}
	auth, callers, err := authenticator(cfg, log)
	if err != nil {
		return nil, err
	}
	a.callers = callers
	auditor := audit.NewAuditor(a.store, log, nil, audit.WithMaxPending(cfg.AuditBuffer), audit.WithMaxWait(cfg.AuditWait),
		audit.WithMetrics(a.metrics))
	a.auditor = auditor
	allow, err := egress.ParseAllow(cfg.EgressAllow)
	if err != nil {
		return nil, fmt.Errorf("MCPAUTH_EGRESS_ALLOW: %w", err)
	}
	// The guard's body cap is the largest response anything may read (a
	// tool result); oauthclient applies its own smaller caps to metadata
	// (256 KiB) and token responses (1 MiB).
	if a.guard, err = egress.New(egress.Config{Allow: allow, OnBlock: audit.EgressBlockHook(auditor, a.metrics),
		MaxBodyBytes: cfg.ToolResultMaxBytes + 64<<10, Instrument: a.traceTransport}); err != nil {
		return nil, err
	}
	if len(allow) > 0 {
		log.Warn("egress allow-list in use: these hosts may be private and reached over plain http", "allow", allow)
	}
	proto, err := oauthclient.New(a.guard.Client(), oauthclient.WithMetadataTTL(cfg.MetadataTTL), oauthclient.WithClientInfo(cfg.ClientName, version.String()))
	if err != nil {
		return nil, err
	}
	if a.reads, err = readlog.New(a.store, log, nil, readlog.Config{FlushInterval: cfg.TokenReadFlushInterval}); err != nil {
		return nil, err
	}
	workloadFiles, err := workload.NewFiles(cfg.WorkloadTokenDirs)
	if err != nil {
		return nil, err
	}
	// The event pipeline's wake-up and the cached reads of the hot paths:
	// commits that store events wake this replica's watchers and
	// dispatcher, and changes to providers drop its cached reads; with
	// Redis, every other replica is told too (polling and the cache TTL
	// bound what a lost message delays).
	wake := audit.NewWakeup()
	cached := a.store.NewCachedReads(cfg.ProviderCacheTTL)
	a.cached = cached
	if err := a.setupBroadcast(wake, cached); err != nil {
		return nil, err
	}
	tokens, err := grants.New(grants.Deps{Store: a.store, Cipher: a.keys, Proto: proto, Locks: a.flows,
		Audit: auditor, Reads: a.reads, Log: log, Metrics: a.metrics,
		Machine:     grants.MachineDeps{Discover: proto, Proto: proto, Assertions: workloadFiles, Identity: proto},
		Credentials: a.store.NewCredentialBatcher(),
		Config: grants.Config{MarginMax: cfg.RefreshMarginMax, LockTTL: cfg.RefreshLockTTL, CacheTTL: cfg.TokenCacheTTL,
			DPoPRetryAfter: cfg.DPoPRetryInterval}})
	if err != nil {
		return nil, err
	}
	a.tokens = tokens
	flow, err := authflow.New(authflow.Deps{Store: a.store, Reads: cached, Cipher: a.keys, Flows: a.flows, Proto: proto,
		Audit: auditor, Log: log, Grants: tokens, Config: authflow.Config{
			CallbackURL: cfg.PublicURL + server.CallbackPath, AuthorizeURLPrefix: cfg.PublicURL + server.AuthorizePath, ClientName: cfg.ClientName,
			ClientMetadataURL: clientMetadataURL(cfg), ReturnOrigins: cfg.ReturnOrigins, FlowTTL: cfg.FlowTTL,
			ProviderMetadataURL: server.ProviderClientMetadataURL(cfg.PublicURL), JWKSURL: server.JWKSURL(cfg.PublicURL),
			ProbeTTL: cfg.MetadataTTL}})
	if err != nil {
		return nil, err
	}
	// NOT_AUTHORIZED answers about a user's connection carry a fresh
	// authorization URL for that user.
	tokens.SetStarter(flow)
	// A tool call's answer comes when the tool is done: the provider's
	// timeout bounds it (mcpclient.Target.Timeout), not the guard's header
	// timeout.
	a.mcp = mcpclient.New(a.guard.CallerBoundClient(), mcpclient.Options{ClientName: cfg.ClientName, ClientVersion: version.String()})
	toolUC, err := tools.New(tools.Deps{Store: a.store, Cipher: a.keys, Grants: tokens, MCP: a.mcp,
		Audit: auditor, Log: log, Metrics: a.metrics, MaxResultBytes: cfg.ToolResultMaxBytes, Starter: flow})
	if err != nil {
		return nil, err
	}
	providerUC, err := providers.New(providers.Deps{Store: a.store, Reads: cached, Cipher: a.keys, Audit: auditor, Log: log,
		Revoker: tokens, Prober: toolUC, Workload: workloadFiles, JWKSURL: server.JWKSURL(cfg.PublicURL),
		ClientMetadataURL: server.ProviderClientMetadataURL(cfg.PublicURL)})
	if err != nil {
		return nil, err
	}
	auditLog, err := audit.NewLog(a.store)
	if err != nil {
		return nil, err
	}
	readLog, err := readlog.NewLog(a.store)
	if err != nil {
		return nil, err
	}
	feed, err := audit.NewFeed(a.store, wake, cfg.EventsPoll)
	if err != nil {
		return nil, err
	}
	sender, err := webhook.NewSender(a.guard.Client(), cfg.WebhookTimeout, cfg.ClientName+"/"+version.String())
	if err != nil {
		return nil, err
	}
	webhookUC, err := webhooks.New(a.store, a.keys, a.guard, nil)
	if err != nil {
		return nil, err
	}
	if a.dispatcher, err = webhooks.NewDispatcher(a.store, a.keys, sender, log, nil, wake, webhooks.DispatchConfig{
		Poll: cfg.EventsPoll, BackoffBase: cfg.WebhookBackoffBase, BackoffMax: cfg.WebhookBackoffMax,
		MaxAttempts: cfg.WebhookMaxAttempts, Lease: 3 * cfg.WebhookTimeout, Workers: cfg.WebhookWorkers,
		MirrorToLog: cfg.AuditLogMirror, Metrics: a.metrics}); err != nil {
		return nil, err
	}
	if a.retention, err = audit.NewRetention(a.store, log, nil, cfg.AuditRetention,
		cfg.AuditRowBound(repository.IsPostgres(cfg.DatabaseDSN()))); err != nil {
		return nil, err
	}
	if cfg.BackgroundRefreshInterval > 0 {
		a.refresher = grants.NewRefresherWith(a.store, tokens, log, grants.RefresherConfig{Interval: cfg.BackgroundRefreshInterval,
			PendingTTL: cfg.FlowTTL + time.Minute})
	}
	services := server.Services{Providers: server.NewProviderAPI(providerUC), OAuth: server.NewOAuthAPI(flow, tokens),
		Audit: server.NewAuditAPI(auditLog, feed), Tools: server.NewToolAPI(toolUC), Webhooks: server.NewWebhookAPI(webhookUC),
		TokenReads: server.NewTokenReadAPI(readLog)}
	connUC, err := connections.New(a.store, tokens, auditor, nil)
	if err != nil {
		return nil, err
	}
	services.Connections = server.NewConnectionAPI(connUC)

	var grpcOpts []grpc.ServerOption
	if cfg.TLS() {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("loading TLS key pair: %w", err)
		}
		a.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		grpcTLS, err := grpcTLSConfig(cfg, a.tlsConfig)
		if err != nil {
			return nil, err
		}
		grpcOpts = append(grpcOpts, grpc.Creds(credentials.NewTLS(grpcTLS)))
	}
	grpcOpts = append(grpcOpts, a.grpcServerTracing()...)
	a.grpc = server.NewGRPCServer(server.GRPCDeps{Log: log, Auth: auth, Denials: auditor, Health: a.health, Options: grpcOpts,
		Services: services, RPCMetrics: a.metrics.RPC})

	// The gateway reaches the gRPC server in process. The in-process server
	// has no TLS: its "network" never leaves the process.
	a.mem = newMemListener()
	inproc := server.NewGRPCServer(server.GRPCDeps{Log: log, Auth: auth, Denials: auditor, Health: a.health,
		Services: services, RPCMetrics: a.metrics.RPC, Options: a.grpcServerTracing()})
	go func() { _ = inproc.Serve(a.mem) }()
	a.gwConn, err = grpc.NewClient("passthrough:///in-process", append([]grpc.DialOption{
		grpc.WithContextDialer(a.mem.DialContext),
		grpc.WithTransportCredentials(insecure.NewCredentials())}, a.grpcClientTracing()...)...)
	if err != nil {
		return nil, err
	}
	gw, err := server.NewGateway(ctx, a.gwConn)
	if err != nil {
		return nil, err
	}
	proxies, err := cfg.TrustedProxyPrefixes()
	if err != nil {
		return nil, err
	}
	browser := server.NewBrowser(server.BrowserDeps{Log: log, Flow: flow, Secure: cfg.PublicHTTPS(), TLS: cfg.TLS(),
		RatePerMinute: cfg.BrowserRatePerMinute, PublicRatePerMinute: cfg.PublicDocumentRatePerMinute, JWKS: providerUC,
		Metrics: a.metrics, TrustedProxies: proxies})
	// Metrics go on the public port only when no admin port is configured.
	metricsHandler := promhttp.HandlerFor(a.metrics.Registry, promhttp.HandlerOpts{})
	var publicMetrics http.Handler
	if cfg.MetricsAddr == "" {
		publicMetrics = metricsHandler
	}
	ready, err := a.setupHealth()
	if err != nil {
		return nil, err
	}
	handler := server.NewHTTPHandler(server.HTTPDeps{Log: log, Gateway: gw, Browser: browser,
		Metrics: publicMetrics, CORSOrigins: cfg.CORSOrigins, TLS: cfg.TLS(),
		Ready: ready, Version: version.String(), OpenAPI: openapi.Document})
	if a.tracer != nil {
		handler = telemetry.Handler(handler, a.tracer, server.TracedPath)
	}
	a.http = server.NewHTTPServer(cfg.HTTPAddr, handler, a.tlsConfig, log)
	if cfg.MetricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metricsHandler)
		if cfg.Pprof {
			mux.HandleFunc("GET /debug/pprof/", pprof.Index)
			mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
		}
		a.metricsSrv = server.NewHTTPServer(cfg.MetricsAddr, mux, nil, log)
	}
	return a, nil
}

// Broadcast topics (statestore.Broadcast).
const (
	topicEvents  = "events"
	topicChanged = "providers-changed"
)

// setupBroadcast connects the store's hooks to the event wake-up and the
// cached reads, in this process and, with Redis, in every replica.
func (a *App) setupBroadcast(wake *audit.Wakeup, cached *repository.CachedReads) error {
	r, ok := a.flows.(*statestore.Redis)
	if !ok {
		a.store.OnEvents(wake.Notify)
		return nil
	}
	b := r.NewBroadcast(a.log)
	a.broadcast = b
	a.store.OnEvents(func() {
		wake.Notify()
		b.Notify(topicEvents)
	})
	a.store.OnChange(func() { b.Notify(topicChanged) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Listen(ctx, map[string]func(){topicEvents: wake.Notify, topicChanged: cached.Invalidate}); err != nil {
		// Not fatal: events are polled for and cached reads expire.
		a.log.Warn("subscribing to the redis broadcast failed; other replicas' changes are seen by polling and the cache TTL", "error", err.Error())
	}
	return nil
}

// Serve serves gRPC on grpcLis and HTTP on httpLis until ctx ends, then
// drains both within the configured grace period.
func (a *App) Serve(ctx context.Context, grpcLis, httpLis net.Listener) error {
	errc := make(chan error, 2)
	if a.metricsSrv != nil {
		ml, err := net.Listen("tcp", a.cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listen: %w", err)
		}
		go func() {
			if err := a.metricsSrv.Serve(ml); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("metrics server stopped", "err", err.Error())
			}
		}()
	}
	go func() { errc <- a.grpc.Serve(grpcLis) }()
	go func() {
		var err error
		if a.tlsConfig != nil {
			err = a.http.ServeTLS(httpLis, "", "")
		} else {
			err = a.http.Serve(httpLis)
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}()
	var wg sync.WaitGroup
	rctx, stopRefresher := context.WithCancel(ctx)
	if a.refresher != nil {
		wg.Add(1)
		go func() { defer wg.Done(); a.refresher.Run(rctx) }()
	}
	if a.callers != nil {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		wg.Add(1)
		go func() { defer wg.Done(); a.callers.Watch(rctx, a.cfg.CallersReloadInterval, hup) }()
	}
	// Stopped with the refresher: an attempt cut short is not recorded, its
	// lease expires and it is made again (at least once).
	if mode, problem := a.store.FanOutLeadMode(); problem {
		a.log.Warn("webhook fan-out: " + mode)
	} else {
		a.log.Info("webhook fan-out: " + mode)
	}
	wg.Add(2)
	go func() { defer wg.Done(); a.dispatcher.Run(rctx) }()
	go func() { defer wg.Done(); a.retention.Run(rctx, a.cfg.AuditRetentionInterval) }()
	a.poller.Poll(ctx)
	wg.Add(1)
	go func() { defer wg.Done(); a.poller.Run(rctx) }()
	a.log.Info("mcpauthd serving", "grpc", grpcLis.Addr().String(), "http", httpLis.Addr().String(), "public_url", a.cfg.PublicURL,
		"version", version.String())
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	a.log.Info("shutting down")
	a.health.Shutdown()
	stopRefresher()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ShutdownGrace)
	defer cancel()
	_ = a.http.Shutdown(sctx)
	if a.metricsSrv != nil {
		_ = a.metricsSrv.Shutdown(sctx)
	}
	done := make(chan struct{})
	go func() { a.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-sctx.Done():
		a.grpc.Stop()
	}
	wg.Wait()
	return serveErr
}

// Listen opens the configured listeners and serves until ctx ends.
func (a *App) Listen(ctx context.Context) error {
	gl, err := net.Listen("tcp", a.cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("grpc listen: %w", err)
	}
	hl, err := net.Listen("tcp", a.cfg.HTTPAddr)
	if err != nil {
		gl.Close()
		return fmt.Errorf("http listen: %w", err)
	}
	return a.Serve(ctx, gl, hl)
}

// Store returns the repository (for operator commands and tests).
func (a *App) Store() *repository.Store { return a.store }

// CachedReads returns the provider reads the hot paths share (for tests
// that check what fills them).
func (a *App) CachedReads() *repository.CachedReads { return a.cached }

// Tokens returns the token lifecycle service (for tests that drive a
// background refresher with their own settings).
func (a *App) Tokens() *grants.Service { return a.tokens }

// clientMetadataURL is the client_id mcpauth uses with servers that support
// Client ID Metadata Documents: the configured document, else the one it
// serves itself when its public URL is https, else none.
func clientMetadataURL(cfg *config.Config) string {
	if cfg.ClientMetadataURL != "" {
		return cfg.ClientMetadataURL
	}
	if strings.HasPrefix(cfg.PublicURL, "https://") {
		return cfg.PublicURL + server.ClientMetadataPath
	}
	return ""
}

// Keys returns the keyring.
func (a *App) Keys() *keyring.Keyring { return a.keys }

// Close releases everything New opened.
func (a *App) Close() {
	if a.traceShutdown != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := a.traceShutdown(sctx); err != nil {
			a.log.Warn("flushing traces", "err", err.Error())
		}
		cancel()
	}
	if a.gwConn != nil {
		_ = a.gwConn.Close()
	}
	if a.mem != nil {
		_ = a.mem.Close()
	}
	if a.mcp != nil {
		_ = a.mcp.Close()
	}
	if a.reads != nil {
		// Serve has drained the calls: store every counted token read.
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownGrace)
		_ = a.reads.Close(ctx)
		cancel()
	}
	if a.auditor != nil {
		// Serve has drained the calls: store every held audit event, for
		// at most the drain grace (what is left is logged as lost).
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownGrace)
		_ = a.auditor.Shutdown(ctx)
		cancel()
	}
	if a.broadcast != nil {
		a.broadcast.Close()
	}
	if a.flows != nil {
		_ = a.flows.Close()
	}
	if a.store != nil {
		_ = a.store.Close()
	}
}
