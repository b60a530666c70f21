package statestore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/mcpauth/mcpauth/internal/batch"

	"github.com/mcpauth/mcpauth/retry"
)

// Redis is a Store backed by Redis through a go-redis UniversalClient, so it
// works with a single node, Sentinel and Cluster alike. It is safe for
// concurrent use by many goroutines and many processes sharing one Redis.
//
// Key layout, all under the configured prefix:
//
//	<prefix>kv:<key>                values written by Put
//	<prefix>lock:{<key>}            lock holder's random token, with the lease TTL
//	<prefix>taken:{<prefix>kv:<key>} a Take's or Claim's receipt (token hash and
//	                                value), so a retried take gets what the lost
//	                                answer held; "settled:<nonce>" once settled
//
// Every key carries a TTL, so nothing outlives the provider or flow it was
// written for. (Leases used to draw a fencing token from a counter kept
// without TTL; no caller read it, since the credential generation check in
// the database is what rejects a stale holder's write, and the counters
// piled up forever, one per provider ever refreshed.)
type Redis struct {
	client redis.UniversalClient
	prefix string
	owned  bool
	// probe, when set, is what Ping uses: a one-connection client to the
	// same servers that never retries. Health probes through the shared
	// pool would count towards go-redis's dial circuit breaker, which, once
	// open, fails every call until its once-a-second probe gets through:
	// a health check must not delay the service's recovery.
	probe redis.UniversalClient
	// sibling, when set, makes more clients with client's settings
	// (siblings), snapshotted before client dialled.
	sibling func(poolSize int, noRetry bool) redis.UniversalClient
	// puts pipelines concurrent Puts (putpipe.go).
	puts *batch.Runner[*putRequest]
}

var _ Store = (*Redis)(nil)

// releaseScript deletes the lock only if it still carries the caller's
// token: a stale holder must not free a lock someone else now holds.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// lockScript takes the lock for ARGV[1] unless someone else holds it. A
// retried call (go-redis retries a command whose answer was lost, for
// example when Redis paused longer than the read timeout) finds its own
// token and counts as acquired, instead of seeing its own key as "locked".
var lockScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)

// takeScript is GETDEL that a retry cannot lose: the taker leaves a receipt
// (its token ARGV[1], 64 hex digits, followed by the value) for ARGV[2] ms,
// and a later take with the same token, whose first answer was lost, gets
// the value from the receipt. Any other taker finds nothing, and so does
// every taker once the receipt is settled (settleScript).
var takeScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[1] .. v, 'PX', ARGV[2])
  return v
end
local r = redis.call('GET', KEYS[2])
if r and string.sub(r, 1, 64) == ARGV[1] then
  return string.sub(r, 65)
end
return false
`)

// settleScript ends a claim: the receipt of token ARGV[1] becomes
// "settled:" followed by this call's nonce ARGV[2] (its TTL kept), so a
// retry of this settle, whose answer was lost, still succeeds, while any
// other settle and every later take find nothing.
var settleScript = redis.NewScript(`
local r = redis.call('GET', KEYS[1])
if not r then
  return 0
end
if string.sub(r, 1, 64) == ARGV[1] then
  redis.call('SET', KEYS[1], 'settled:' .. ARGV[2], 'KEEPTTL')
  return 1
end
if r == 'settled:' .. ARGV[2] then
  return 1
end
return 0
`)

// extendScript resets the lock's TTL only if it still carries the caller's token.
var extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// NewRedis returns a Store using client, with every key prefixed by prefix
// (for example "mcpauth:"). The caller keeps ownership of client: Close does
// not close it.
func NewRedis(client redis.UniversalClient, prefix string) *Redis {
	return &Redis{client: client, prefix: prefix, puts: newPutPipeline(client)}
}

// NewRedisFromURL returns a Store connected as rawURL says; Close closes its
// client. Supported forms (go-redis option names as query parameters, such as
// dial_timeout=2s, read_timeout=1s, pool_size=20, max_retries=2):
//
//	redis://[user:password@]host:port[/db]            one node
//	rediss://...                                      one node over TLS
//	unix://[user:password@]/path/to/redis.sock[?db=N] one node over a Unix socket
//	redis+cluster://[user:password@]host:port?addr=host2:port&addr=...   Cluster (rediss+cluster for TLS)
//	redis+sentinel://[user:password@]host:port[/db]?master_name=NAME[&addr=host2:port...]
//	    [&sentinel_username=U&sentinel_password=P]    Sentinel (rediss+sentinel for TLS)
//
// For Sentinel the URL's hosts are the sentinels and the userinfo
// authenticates to the master. Keys get the prefix given by the query
// parameter "prefix" (removed before the URL reaches go-redis), default
// "mcpauth:".
func NewRedisFromURL(rawURL string) (*Redis, error) {
	prefix := "mcpauth:"
	u, err := url.Parse(rawURL)
	if err != nil {
		// The URL may carry a password: do not echo it.
		return nil, errors.New("statestore: redis URL does not parse")
	}
	q := u.Query()
	if q.Has("prefix") {
		prefix = q.Get("prefix")
		q.Del("prefix")
		u.RawQuery = q.Encode()
	}
	var client redis.UniversalClient
	switch u.Scheme {
	case "redis", "rediss", "unix":
		opts, err := redis.ParseURL(u.String())
		if err != nil {
			return nil, fmt.Errorf("statestore: redis URL: %w", redactURLError(err))
		}
		client = redis.NewClient(opts)
	case "redis+cluster", "rediss+cluster":
		u.Scheme = strings.TrimSuffix(u.Scheme, "+cluster")
		opts, err := redis.ParseClusterURL(u.String())
		if err != nil {
			return nil, fmt.Errorf("statestore: redis cluster URL: %w", redactURLError(err))
		}
		if opts.ReadOnly || opts.RouteByLatency || opts.RouteRandomly {
			// Reads sent to replicas may miss a write just made on the
			// primary: a Put's read-back, a lock's check.
			return nil, errors.New("statestore: redis cluster URL: read_only, route_by_latency and route_randomly are not supported: the state store reads what it has just written, which a replica may not have yet")
		}
		client = redis.NewClusterClient(opts)
	case "redis+sentinel", "rediss+sentinel":
		opts, err := parseSentinelURL(u)
		if err != nil {
			return nil, err
		}
		client = redis.NewFailoverClient(opts)
	default:
		return nil, fmt.Errorf("statestore: unsupported redis URL scheme %q", u.Scheme)
	}
	r := NewRedis(client, prefix)
	r.owned = true
	// Before client dials: see siblings.
	if r.sibling = siblings(client); r.sibling != nil {
		r.probe = r.sibling(1, true)
	}
	return r, nil
}

// siblings returns a maker of new clients with client's settings and a
// pool of poolSize connections (noRetry: no retries), or nil for a client
// type it does not know. It snapshots client's options now: call it before
// client has dialled, or on a client passed in (whose settings are the
// caller's).
//
// A client's options are not quite the settings it was given. NewClient
// keeps the client's push notification processor in them, for the clients
// it derives itself; a second client built from a plain copy used that
// processor too, and go-redis's maintenance notifications, registering their
// handlers (MOVING, MIGRATING, ...) for the second client, found the first
// client's there: "cannot overwrite existing handler", a plain-text line on
// stderr at every start (once for the health probe's client, once for the
// broadcast's), and the second client's notifications went to the first
// client's handlers. The copy therefore drops the processor, so that each
// client makes its own. Its maintenance notifications settings are copied
// too, not shared: go-redis rewrites a live client's mode when it falls back
// (auto mode on a server without them).
//
// Maintenance notifications stay in go-redis's default auto mode, not
// disabled: the client offers them in the connection handshake
// (CLIENT MAINT_NOTIFICATIONS), a server without them (Redis Open Source,
// which this service is tested on) refuses, and the client turns them off for
// good, without a log line; Redis Software and Redis Cloud announce a node's
// maintenance instead, and the client moves its connections before the node
// goes rather than failing calls. Sentinel clients have them disabled by
// go-redis, which the copy keeps.
func siblings(client redis.UniversalClient) func(poolSize int, noRetry bool) redis.UniversalClient {
	switch c := client.(type) {
	case *redis.Client: // one node, or a Sentinel failover client (its dialer asks the sentinels)
		base := *c.Options()
		base.PushNotificationProcessor, base.MaintNotificationsConfig = nil, copyMaint(base.MaintNotificationsConfig)
		return func(poolSize int, noRetry bool) redis.UniversalClient {
			o := base // NewClient copies the maintenance notifications settings again
			o.PoolSize, o.MinIdleConns, o.MaxIdleConns = poolSize, 0, poolSize
			if noRetry {
				o.MaxRetries = -1
			}
			return redis.NewClient(&o)
		}
	case *redis.ClusterClient:
		base := *c.Options()
		base.PushNotificationProcessor, base.MaintNotificationsConfig = nil, copyMaint(base.MaintNotificationsConfig)
		return func(poolSize int, noRetry bool) redis.UniversalClient {
			o := base
			o.PoolSize, o.MinIdleConns, o.MaxIdleConns = poolSize, 0, poolSize
			if noRetry {
				o.MaxRetries = -1
			}
			return redis.NewClusterClient(&o)
		}
	}
	return nil
}

// copyMaint returns a copy of m (nil for nil).
func copyMaint(m *maintnotifications.Config) *maintnotifications.Config {
	if m == nil {
		return nil
	}
	c := *m
	return &c
}

// redactURLError drops go-redis URL errors that could quote the URL; the
// messages it produces for query parameters name only the parameter.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return errors.New("malformed URL")
	}
	return err
}

// parseSentinelURL builds Sentinel options from a redis+sentinel URL.
func parseSentinelURL(u *url.URL) (*redis.FailoverOptions, error) {
	opts := &redis.FailoverOptions{}
	if u.Host == "" {
		return nil, errors.New("statestore: sentinel URL needs a host")
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		host, port = u.Host, "26379"
	}
	opts.SentinelAddrs = append(opts.SentinelAddrs, net.JoinHostPort(host, port))
	if u.User != nil {
		opts.Username = u.User.Username()
		opts.Password, _ = u.User.Password()
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		db, err := strconv.Atoi(p)
		if err != nil || db < 0 {
			return nil, errors.New("statestore: sentinel URL: path must be a database number")
		}
		opts.DB = db
	}
	if strings.HasPrefix(u.Scheme, "rediss") {
		opts.TLSConfig = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	for name, values := range u.Query() {
		v := values[len(values)-1]
		var err error
		switch name {
		case "master_name":
			opts.MasterName = v
		case "addr":
			for _, a := range values {
				if _, _, err := net.SplitHostPort(a); err != nil {
					return nil, fmt.Errorf("statestore: sentinel URL: addr %q needs host:port", a)
				}
				opts.SentinelAddrs = append(opts.SentinelAddrs, a)
			}
		case "sentinel_username":
			opts.SentinelUsername = v
		case "sentinel_password":
			opts.SentinelPassword = v
		case "db":
			opts.DB, err = strconv.Atoi(v)
		case "dial_timeout":
			opts.DialTimeout, err = parseDuration(v)
		case "read_timeout":
			opts.ReadTimeout, err = parseDuration(v)
		case "write_timeout":
			opts.WriteTimeout, err = parseDuration(v)
		case "pool_timeout":
			opts.PoolTimeout, err = parseDuration(v)
		case "pool_size":
			opts.PoolSize, err = strconv.Atoi(v)
		case "max_retries":
			opts.MaxRetries, err = strconv.Atoi(v)
		case "replica_only":
			opts.ReplicaOnly, err = strconv.ParseBool(v)
		default:
			return nil, fmt.Errorf("statestore: sentinel URL: unknown parameter %q", name)
		}
		if err != nil {
			return nil, fmt.Errorf("statestore: sentinel URL: parameter %q: invalid value", name)
		}
	}
	if opts.MasterName == "" {
		return nil, errors.New("statestore: sentinel URL needs master_name")
	}
	return opts, nil
}

// parseDuration accepts a Go duration or, as go-redis does, plain seconds.
func parseDuration(v string) (time.Duration, error) {
	if n, err := strconv.Atoi(v); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(v)
}

func (r *Redis) kvKey(key string) string   { return r.prefix + "kv:" + key }
func (r *Redis) lockKey(key string) string { return r.prefix + "lock:{" + key + "}" }

// receiptKey shares its hash tag with the key's value, so both live in one
// Cluster slot (flow keys carry no braces of their own).
func (r *Redis) receiptKey(key string) string { return r.prefix + "taken:{" + r.kvKey(key) + "}" }

// Put implements Store with SET NX PX in a script, so that a retried Put
// whose first answer was lost does not report its own value as ErrExists.
func (r *Redis) Put(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := validate(key, ttl, true); err != nil {
		return err
	}
	return put(ctx, r.puts, r.kvKey(key), value, roundTTL(ttl).Milliseconds())
}

// Take implements Store atomically: of concurrent takers on any number of
// replicas, exactly one receives the value. It is safe to retry: a take
// whose answer was lost (Redis stalled past the read timeout, the
// connection broke) is retried with the same token and receives the value
// from its receipt, so a stall never destroys a value nobody received.
func (r *Redis) Take(ctx context.Context, key string) ([]byte, error) {
	return r.Claim(ctx, key, rand.Text(), receiptTTL)
}

// Claim implements Store: Take with the caller's token, whose receipt
// lasts ttl. The token is hashed, so a receipt never holds it.
func (r *Redis) Claim(ctx context.Context, key, token string, ttl time.Duration) ([]byte, error) {
	if err := validateClaim(key, token); err != nil {
		return nil, err
	}
	if err := validate(key, ttl, true); err != nil {
		return nil, err
	}
	v, err := r.runRetrySafe(ctx, takeScript, []string{r.kvKey(key), r.receiptKey(key)}, tokenHash(token), roundTTL(ttl).Milliseconds()).Text()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, wrap("take", err)
	}
	return []byte(v), nil
}

// Settle implements Store with a fresh nonce per call, which its retries
// share.
func (r *Redis) Settle(ctx context.Context, key, token string) error {
	if err := validateClaim(key, token); err != nil {
		return err
	}
	n, err := r.runRetrySafe(ctx, settleScript, []string{r.receiptKey(key)}, tokenHash(token), rand.Text()).Int64()
	if err != nil {
		return wrap("settle", err)
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

// runRetrySafe runs a script whose arguments make a second run answer as
// the first did (a token or nonce), retrying it while its answer may have
// been lost and the caller's context allows.
func (r *Redis) runRetrySafe(ctx context.Context, s *redis.Script, keys []string, args ...any) *redis.Cmd {
	var cmd *redis.Cmd
	_ = retry.Do(ctx, takeRetry, func(ctx context.Context, _ int) error {
		cmd = s.Run(ctx, r.client, keys, args...)
		err := cmd.Err()
		if err != nil && (errors.Is(err, redis.Nil) || !mayHaveRun(err)) {
			return retry.Permanent(err)
		}
		return err
	})
	return cmd
}

// tokenHash is the fixed-length form of a claim token kept in a receipt.
func tokenHash(token string) string {
	h := sha256.Sum256([]byte("mcpauth/statestore/claim\x00" + token))
	return hex.EncodeToString(h[:])
}

// mayHaveRun reports whether a failed command may have run on Redis with
// its answer lost (a timeout, a connection cut mid-command): only then is
// the take retried with its nonce. A command that could not be sent (no
// connection, a refused dial, an exhausted pool) ran nowhere.
func mayHaveRun(err error) bool {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrPoolExhausted),
		errors.Is(err, redis.ErrClosed), errors.Is(err, context.Canceled):
		return false
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return false
	}
	return classifyUnavailable(err)
}

// receiptTTL is how long a Take's receipt lets a retry of the same take
// receive the value.
const receiptTTL = time.Minute

// takeRetry retries a take or settle that failed for want of Redis (with
// the same token and nonce) while the caller's context allows.
var takeRetry = retry.Policy{Attempts: 4, Base: 50 * time.Millisecond, Max: 500 * time.Millisecond, Jitter: 0.5}

// Get implements Store with GET; the value and its TTL stay as they are.
func (r *Redis) Get(ctx context.Context, key string) ([]byte, error) {
	if err := validate(key, 0, false); err != nil {
		return nil, err
	}
	v, err := r.client.Get(ctx, r.kvKey(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, wrap("get", err)
	}
	return v, nil
}

// Lock implements Store with a random owner token set in a script that
// treats the caller's own token as acquired, so a retried acquire whose
// first answer was lost does not find itself "locked" for a whole TTL. An
// acquire that fails for want of Redis releases what it may have taken.
func (r *Redis) Lock(ctx context.Context, key string, ttl time.Duration) (Lease, error) {
	if err := validate(key, ttl, true); err != nil {
		return nil, err
	}
	token := rand.Text()
	l := &redisLease{r: r, key: r.lockKey(key), owner: token}
	n, err := lockScript.Run(ctx, r.client, []string{l.key}, token, roundTTL(ttl).Milliseconds()).Int64()
	if err != nil {
		// The script may have run and its answer been lost: free the lock
		// in the background, so this replica does not block every other
		// for a TTL. Release only deletes a lock carrying our token.
		go func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			_ = l.Release(rctx)
		}()
		return nil, wrap("lock", err)
	}
	if n == 0 {
		return nil, ErrLocked
	}
	return l, nil
}

// WaitUnlocked implements Store by polling EXISTS.
func (r *Redis) WaitUnlocked(ctx context.Context, key string) error {
	if err := validate(key, 0, false); err != nil {
		return err
	}
	lk := r.lockKey(key)
	return waitUntil(ctx, func(ctx context.Context) (bool, error) {
		n, err := r.client.Exists(ctx, lk).Result()
		if err != nil {
			return false, wrap("wait unlocked", err)
		}
		return n == 0, nil
	})
}

// Ping implements Store.
func (r *Redis) Ping(ctx context.Context) error {
	c := r.client
	if r.probe != nil {
		c = r.probe
	}
	if err := c.Ping(ctx).Err(); err != nil {
		return wrap("ping", err)
	}
	return nil
}

// Close closes the client if NewRedisFromURL created it, and does nothing
// for a client passed to NewRedis.
func (r *Redis) Close() error {
	if !r.owned {
		return nil
	}
	if r.probe != nil {
		_ = r.probe.Close()
	}
	if err := r.client.Close(); err != nil {
		return wrap("close", err)
	}
	return nil
}

// roundTTL rounds a sub-millisecond TTL up so that PX never gets 0.
func roundTTL(ttl time.Duration) time.Duration {
	return max(ttl.Round(time.Millisecond), time.Millisecond)
}

// redisLease is a lock held in Redis.
type redisLease struct {
	r     *Redis
	key   string
	owner string
}

func (l *redisLease) Release(ctx context.Context) error {
	n, err := releaseScript.Run(ctx, l.r.client, []string{l.key}, l.owner).Int64()
	if err != nil {
		return wrap("release", err)
	}
	if n == 0 {
		return ErrLeaseLost
	}
	return nil
}

func (l *redisLease) Extend(ctx context.Context, ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("statestore: ttl %v must be positive", ttl)
	}
	n, err := extendScript.Run(ctx, l.r.client, []string{l.key}, l.owner, roundTTL(ttl).Milliseconds()).Int64()
	if err != nil {
		return wrap("extend", err)
	}
	if n == 0 {
		return ErrLeaseLost
	}
	return nil
}

// Client returns the go-redis client (for instrumentation).
func (r *Redis) Client() redis.UniversalClient { return r.client }
