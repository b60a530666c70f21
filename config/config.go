// Package config loads mcpauthd's configuration from MCPAUTH_* environment
// variables (defaults in struct tags) and a few command-line flags that
// override them. Secret values are typed so they cannot be printed.
package config

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/mcpauth/mcpauth/secret"
)

// Config is the whole configuration of one mcpauthd process.
type Config struct {
	// GRPCAddr is the gRPC listen address.
	GRPCAddr string `env:"MCPAUTH_GRPC_ADDR, default=:9090"`
	// HTTPAddr is the REST gateway and browser routes listen address.
	HTTPAddr string `env:"MCPAUTH_HTTP_ADDR, default=:8080"`
	// DataDir holds the SQLite file, the dev master key and the admin key.
	DataDir string `env:"MCPAUTH_DATA_DIR, default=./data"`
	// DatabaseURL selects Postgres (postgres://...); empty means the SQLite
	// file <DataDir>/mcpauth.db.
	DatabaseURL SecretString `env:"MCPAUTH_DATABASE_URL"`
	// DatabaseMaxConns caps open PostgreSQL connections per replica.
	DatabaseMaxConns int `env:"MCPAUTH_DATABASE_MAX_CONNS, default=20"`
	// RedisURL selects Redis (redis:// or rediss://) for flow state and
	// refresh locks; empty means the in-process store (one replica only).
	RedisURL SecretString `env:"MCPAUTH_REDIS_URL"`
	// MasterKeys is the key spec "ID:BASE64,ID:BASE64", primary first.
	MasterKeys SecretString `env:"MCPAUTH_MASTER_KEYS"`
	// MasterKeyFile is a file holding the key spec; used when MasterKeys is
	// empty. Without either, a dev key is generated in DataDir.
	MasterKeyFile string `env:"MCPAUTH_MASTER_KEY_FILE"`
	// CallersFile is the JSON file of API callers; without it an admin key
	// is generated into <DataDir>/admin.key.
	CallersFile string `env:"MCPAUTH_CALLERS_FILE"`
	// CallersReloadInterval is how often the callers file is checked for
	// changes (SIGHUP checks at once); 0 leaves only SIGHUP.
	CallersReloadInterval time.Duration `env:"MCPAUTH_CALLERS_RELOAD_INTERVAL, default=5s"`
	// PublicURL is the gateway's external base URL, used for the authorize
	// and callback URLs handed to browsers and authorization servers. Unset,
	// it follows HTTPAddr: http(s)://localhost:<its port> (or its host when
	// that is a specific address).
	PublicURL string `env:"MCPAUTH_PUBLIC_URL"`
	// ClientMetadataURL is an https URL of a Client ID Metadata Document to
	// use as client_id; empty means mcpauth serves its own when PublicURL is
	// https.
	ClientMetadataURL string `env:"MCPAUTH_CLIENT_METADATA_URL"`
	// ClientName is the client_name shown by authorization servers.
	ClientName string `env:"MCPAUTH_CLIENT_NAME, default=mcpauth"`
	// EgressAllow lists hosts, IPs or CIDRs that the egress guard lets
	// through even when private, and over plain http (development, tests).
	EgressAllow string `env:"MCPAUTH_EGRESS_ALLOW"`
	// ReturnOrigins lists the origins StartAuthorization accepts in
	// return_url.
	ReturnOrigins []string `env:"MCPAUTH_RETURN_ORIGINS"`
	// CORSOrigins lists origins allowed to call the REST gateway from a
	// browser; CORS is closed when empty.
	CORSOrigins []string `env:"MCPAUTH_CORS_ORIGINS"`
	// TLSCertFile and TLSKeyFile serve both ports over TLS when set.
	TLSCertFile string `env:"MCPAUTH_TLS_CERT_FILE"`
	TLSKeyFile  string `env:"MCPAUTH_TLS_KEY_FILE"`
	// TLSClientCAFile, with TLS, makes the gRPC port ask for client
	// certificates and verify them against these CAs (PEM); callers whose
	// certificate the callers file maps (cert_uri, cert_subject) need no
	// API key. The HTTP port, which browsers use, never asks.
	TLSClientCAFile string `env:"MCPAUTH_TLS_CLIENT_CA_FILE"`
	// TLSClientAuth is "optional" (API-key callers connect without a
	// certificate) or "require" (every gRPC connection presents a verified
	// certificate).
	TLSClientAuth string `env:"MCPAUTH_TLS_CLIENT_AUTH, default=optional"`
	// MetricsAddr, when set, serves /metrics on its own listener (an admin
	// port) instead of the public HTTP port.
	MetricsAddr string `env:"MCPAUTH_METRICS_ADDR"`
	// Pprof serves Go's profiles (/debug/pprof/) on the admin port of
	// MetricsAddr, never on the public one: for profiling under load.
	Pprof bool `env:"MCPAUTH_PPROF, default=false"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `env:"MCPAUTH_LOG_LEVEL, default=info"`
	// TrustedProxies lists CIDRs of reverse proxies whose X-Forwarded-For
	// names the client for the browser routes' rate limit.
	TrustedProxies []string `env:"MCPAUTH_TRUSTED_PROXIES"`
	// WorkloadTokenDirs lists the directories (absolute) from which
	// providers of credential kind JWT_BEARER may read workload identity
	// tokens, such as /var/run/secrets/tokens; empty disables the kind.
	// Tenants name files through the API, so keep these directories free
	// of anything but such tokens.
	WorkloadTokenDirs []string `env:"MCPAUTH_WORKLOAD_TOKEN_DIRS"`
	// BrowserRatePerMinute limits authorize and callback requests per client
	// IP.
	BrowserRatePerMinute int `env:"MCPAUTH_BROWSER_RATE_PER_MINUTE, default=60"`
	// PublicDocumentRatePerMinute limits, per client IP, the documents
	// authorization servers fetch without credentials: the per-provider
	// Client ID Metadata Documents and JWKS. It is generous (several
	// servers may sit behind one address) but bounds the database reads
	// anyone can cause.
	PublicDocumentRatePerMinute int `env:"MCPAUTH_PUBLIC_DOCUMENT_RATE_PER_MINUTE, default=600"`
	// FlowTTL is how long an authorization flow stays valid.
	FlowTTL time.Duration `env:"MCPAUTH_FLOW_TTL, default=5m"`
	// MetadataTTL is how long discovered metadata is cached.
	MetadataTTL time.Duration `env:"MCPAUTH_METADATA_TTL, default=10m"`
	// RefreshMarginMax caps how long before expiry a token is refreshed; the
	// margin is a quarter of the token's lifetime up to this cap.
	RefreshMarginMax time.Duration `env:"MCPAUTH_REFRESH_MARGIN_MAX, default=60s"`
	// RefreshLockTTL bounds how long a crashed refresher holds the lock.
	RefreshLockTTL time.Duration `env:"MCPAUTH_REFRESH_LOCK_TTL, default=15s"`
	// DPoPRetryInterval is how long a grant whose refresh was answered with
	// a token not bound to its DPoP key waits before the kept refresh token
	// is tried again (see grants.Config.DPoPRetryAfter).
	DPoPRetryInterval time.Duration `env:"MCPAUTH_DPOP_RETRY_INTERVAL, default=5m"`
	// TokenCacheTTL keeps opened credentials in memory this long, so bursts
	// of token reads cost one database read; another replica's revocation
	// is seen within this time. 0 disables the cache.
	TokenCacheTTL time.Duration `env:"MCPAUTH_TOKEN_CACHE_TTL, default=1s"`
	// ProviderCacheTTL keeps the provider reads of StartAuthorization and
	// GetProvider in memory this long; this replica's changes drop them at
	// once, other replicas' through the Redis broadcast, and within this
	// TTL at most if that message is lost.
	ProviderCacheTTL time.Duration `env:"MCPAUTH_PROVIDER_CACHE_TTL, default=1s"`
	// TokenReadFlushInterval is how often token-read counts are stored: the
	// most a crash (not a graceful stop) can lose of them.
	TokenReadFlushInterval time.Duration `env:"MCPAUTH_TOKEN_READ_FLUSH_INTERVAL, default=5s"`
	// BackgroundRefreshInterval is how often idle authorizations are
	// checked; 0 disables the background refresher.
	BackgroundRefreshInterval time.Duration `env:"MCPAUTH_BACKGROUND_REFRESH_INTERVAL, default=1m"`
	// ShutdownGrace bounds the graceful drain on SIGTERM.
	ShutdownGrace time.Duration `env:"MCPAUTH_SHUTDOWN_GRACE, default=15s"`
	// HealthInterval is how often the database and Redis are probed for
	// gRPC health (grpc.health.v1 per service).
	HealthInterval time.Duration `env:"MCPAUTH_HEALTH_INTERVAL, default=5s"`
	// ToolResultMaxBytes caps one tool result.
	ToolResultMaxBytes int64 `env:"MCPAUTH_TOOL_RESULT_MAX_BYTES, default=4194304"`

	// EventsPoll is how often WatchEvents streams and the webhook
	// dispatcher look for events written by other replicas (this replica's
	// wake them at once).
	EventsPoll time.Duration `env:"MCPAUTH_EVENTS_POLL, default=250ms"`
	// WebhookTimeout bounds one delivery attempt.
	WebhookTimeout time.Duration `env:"MCPAUTH_WEBHOOK_TIMEOUT, default=10s"`
	// WebhookBackoffBase is the first retry delay; each retry doubles it
	// (with jitter) up to WebhookBackoffMax.
	WebhookBackoffBase time.Duration `env:"MCPAUTH_WEBHOOK_BACKOFF_BASE, default=1s"`
	WebhookBackoffMax  time.Duration `env:"MCPAUTH_WEBHOOK_BACKOFF_MAX, default=10m"`
	// WebhookMaxAttempts after which a delivery is dead (a dead letter,
	// listed by ListWebhookDeliveries, until RedeliverWebhookEvent).
	WebhookMaxAttempts int `env:"MCPAUTH_WEBHOOK_MAX_ATTEMPTS, default=30"`
	// WebhookWorkers bounds the webhook requests in flight per replica
	// (one per ordered group, endpoint and provider, at a time).
	WebhookWorkers int `env:"MCPAUTH_WEBHOOK_WORKERS, default=32"`
	// AuditLogMirror also writes every audit event to the log (one JSON
	// line each, at least once) for a log pipeline.
	AuditLogMirror bool `env:"MCPAUTH_AUDIT_LOG_MIRROR, default=false"`
	// AuditRetention keeps audit events this long (0: for ever). On
	// PostgreSQL whole monthly partitions are dropped once entirely older.
	AuditRetention time.Duration `env:"MCPAUTH_AUDIT_RETENTION, default=2160h"`
	// AuditMaxRows bounds the audit log's rows (the oldest beyond go; 0: no
	// bound). Meant for SQLite, where it defaults to one million.
	AuditMaxRows int64 `env:"MCPAUTH_AUDIT_MAX_ROWS, default=-1"`
	// AuditRetentionInterval is how often retention runs.
	AuditRetentionInterval time.Duration `env:"MCPAUTH_AUDIT_RETENTION_INTERVAL, default=1h"`
	// AuditBuffer bounds the audit events held in memory while the database
	// is unreachable (a typical event about 420 bytes); more are dropped,
	// counted and logged.
	AuditBuffer int `env:"MCPAUTH_AUDIT_BUFFER, default=50000"`
	// AuditWait bounds how long an operation waits for its audit event's
	// first write attempt before it answers (the event is stored later).
	AuditWait time.Duration `env:"MCPAUTH_AUDIT_WAIT, default=2s"`
}

// AuditRowBound is the audit row bound to apply: AuditMaxRows when set,
// else one million on SQLite and none on PostgreSQL.
func (c *Config) AuditRowBound(postgres bool) int64 {
	switch {
	case c.AuditMaxRows >= 0:
		return c.AuditMaxRows
	case postgres:
		return 0
	}
	return 1_000_000
}

// SecretString is a configuration value that must not be printed.
type SecretString struct{ secret.Secret }

// EnvDecode implements envconfig.Decoder.
func (s *SecretString) EnvDecode(v string) error {
	s.Secret = secret.New(v)
	return nil
}

// Load reads the environment, then the flags in args (without the program
// name), and validates the result.
func Load(ctx context.Context, args []string, lookup envconfig.Lookuper) (*Config, error) {
	var c Config
	if lookup == nil {
		lookup = envconfig.OsLookuper()
	}
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &c, Lookuper: lookup}); err != nil {
		return nil, fmt.Errorf("reading environment: %w", err)
	}
	fs := flagSet(&c)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.PublicURL == "" {
		c.PublicURL = localURL(c.HTTPAddr, c.TLS())
	}
	return &c, c.validate()
}

// localURL is the public URL of a gateway listening on addr when nothing
// else is configured: the port of addr on localhost, or on addr's host when
// it names one address (not a wildcard).
func localURL(addr string, tls bool) string {
	scheme := "http"
	if tls {
		scheme = "https"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return scheme + "://localhost:8080"
	}
	if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
		host = "localhost"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// flagSet binds the command-line flags to c's fields; their defaults are
// c's current values (the environment's).
func flagSet(c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("mcpauthd", flag.ContinueOnError)
	fs.StringVar(&c.GRPCAddr, "grpc-addr", c.GRPCAddr, "gRPC listen address (MCPAUTH_GRPC_ADDR)")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "HTTP gateway listen address (MCPAUTH_HTTP_ADDR)")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "data directory (MCPAUTH_DATA_DIR)")
	fs.StringVar(&c.PublicURL, "public-url", c.PublicURL, "external base URL of the gateway (MCPAUTH_PUBLIC_URL; default http(s)://<host of -http-addr, localhost for none or a wildcard>:<its port>)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error (MCPAUTH_LOG_LEVEL)")
	return fs
}

// PrintFlags writes the flags Load accepts, with their built-in defaults,
// to w (for a command's help text). It reads no environment.
func PrintFlags(w io.Writer) {
	c := Config{GRPCAddr: ":9090", HTTPAddr: ":8080", DataDir: "./data", LogLevel: "info"}
	fs := flagSet(&c)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

func (c *Config) validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("MCPAUTH_DATA_DIR must not be empty"))
	}
	u, err := url.Parse(c.PublicURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		errs = append(errs, fmt.Errorf("MCPAUTH_PUBLIC_URL %q must be an absolute http(s) URL without query or fragment", c.PublicURL))
	} else {
		c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	}
	if c.ClientMetadataURL != "" {
		if u, err := url.Parse(c.ClientMetadataURL); err != nil || u.Scheme != "https" || u.Path == "" || u.Path == "/" {
			errs = append(errs, errors.New("MCPAUTH_CLIENT_METADATA_URL must be an https URL with a path"))
		}
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("MCPAUTH_TLS_CERT_FILE and MCPAUTH_TLS_KEY_FILE go together"))
	}
	if c.TLSClientCAFile != "" && c.TLSCertFile == "" {
		errs = append(errs, errors.New("MCPAUTH_TLS_CLIENT_CA_FILE needs MCPAUTH_TLS_CERT_FILE and MCPAUTH_TLS_KEY_FILE (client certificates are verified on the gRPC port's TLS)"))
	}
	if c.TLSClientAuth != "optional" && c.TLSClientAuth != "require" {
		errs = append(errs, fmt.Errorf("MCPAUTH_TLS_CLIENT_AUTH %q must be optional or require", c.TLSClientAuth))
	}
	if c.CallersReloadInterval < 0 {
		errs = append(errs, errors.New("MCPAUTH_CALLERS_RELOAD_INTERVAL must not be negative"))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("MCPAUTH_LOG_LEVEL %q must be debug, info, warn or error", c.LogLevel))
	}
	if c.FlowTTL < time.Minute || c.FlowTTL > 10*time.Minute {
		errs = append(errs, errors.New("MCPAUTH_FLOW_TTL must be between 1m and 10m"))
	}
	if _, err := c.TrustedProxyPrefixes(); err != nil {
		errs = append(errs, err)
	}
	if c.TokenReadFlushInterval < 10*time.Millisecond || c.TokenReadFlushInterval > time.Minute {
		errs = append(errs, errors.New("MCPAUTH_TOKEN_READ_FLUSH_INTERVAL must be between 10ms and 1m"))
	}
	if c.ProviderCacheTTL < 0 || c.ProviderCacheTTL > 10*time.Second {
		errs = append(errs, errors.New("MCPAUTH_PROVIDER_CACHE_TTL must be between 0 and 10s"))
	}
	if c.AuditBuffer < 1000 || c.AuditBuffer > 10_000_000 {
		errs = append(errs, errors.New("MCPAUTH_AUDIT_BUFFER must be between 1000 and 10000000"))
	}
	if c.AuditWait < 10*time.Millisecond || c.AuditWait > 30*time.Second {
		errs = append(errs, errors.New("MCPAUTH_AUDIT_WAIT must be between 10ms and 30s"))
	}
	if c.AuditRetentionInterval < time.Second || c.AuditRetentionInterval > 24*time.Hour {
		errs = append(errs, errors.New("MCPAUTH_AUDIT_RETENTION_INTERVAL must be between 1s and 24h"))
	}
	if c.DPoPRetryInterval < time.Second || c.DPoPRetryInterval > 24*time.Hour {
		errs = append(errs, errors.New("MCPAUTH_DPOP_RETRY_INTERVAL must be between 1s and 24h"))
	}
	if c.TokenCacheTTL < 0 || c.TokenCacheTTL > 10*time.Second {
		errs = append(errs, errors.New("MCPAUTH_TOKEN_CACHE_TTL must be between 0 and 10s"))
	}
	if c.DatabaseMaxConns < 1 || c.DatabaseMaxConns > 1000 {
		errs = append(errs, errors.New("MCPAUTH_DATABASE_MAX_CONNS must be between 1 and 1000"))
	}
	if c.HealthInterval < 10*time.Millisecond || c.HealthInterval > 5*time.Minute {
		errs = append(errs, errors.New("MCPAUTH_HEALTH_INTERVAL must be between 10ms and 5m"))
	}
	if c.BrowserRatePerMinute < 1 {
		errs = append(errs, errors.New("MCPAUTH_BROWSER_RATE_PER_MINUTE must be at least 1"))
	}
	if c.PublicDocumentRatePerMinute < 1 {
		errs = append(errs, errors.New("MCPAUTH_PUBLIC_DOCUMENT_RATE_PER_MINUTE must be at least 1"))
	}
	for _, o := range append(append([]string{}, c.ReturnOrigins...), c.CORSOrigins...) {
		if u, err := url.Parse(o); err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || (u.Scheme != "https" && u.Scheme != "http") {
			errs = append(errs, fmt.Errorf("origin %q must be scheme://host[:port]", o))
		}
	}
	return errors.Join(errs...)
}

// DatabaseDSN returns the database to open: the Postgres URL, or the SQLite
// file in the data directory.
func (c *Config) DatabaseDSN() string {
	if d := c.DatabaseURL.Reveal(); d != "" {
		return d
	}
	return filepath.Join(c.DataDir, "mcpauth.db")
}

// TrustedProxyPrefixes parses TrustedProxies (CIDRs or single addresses).
func (c *Config) TrustedProxyPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range c.TrustedProxies {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("MCPAUTH_TRUSTED_PROXIES entry %q is not an address or CIDR", s)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// TLS reports whether the ports are served over TLS.
func (c *Config) TLS() bool { return c.TLSCertFile != "" }

// PublicHTTPS reports whether the public URL is https (needed to serve our
// own Client ID Metadata Document and for __Host- cookies).
func (c *Config) PublicHTTPS() bool { return strings.HasPrefix(c.PublicURL, "https://") }
