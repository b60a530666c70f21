package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime/debug"
	"slices"
	"time"

	"github.com/mcpauth/mcpauth/app"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/config"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/rotation"
)

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

// serve runs the service until SIGINT or SIGTERM, then drains.
func serve(ctx context.Context, args []string, _ io.Writer) error {
	serverGC()
	cfg, err := config.Load(ctx, args, nil)
	if err != nil {
		return err
	}
	log := newLogger(cfg.LogLevel)
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Listen(ctx)
}

// migrate applies the database migrations and exits.
func migrate(ctx context.Context, args []string, out io.Writer) error {
	cfg, err := config.Load(ctx, args, nil)
	if err != nil {
		return err
	}
	st, err := app.OpenStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	fmt.Fprintln(out, "migrations applied")
	return nil
}

// keyedStore is what the key commands work on: the configuration's
// keyring and the migrated database.
type keyedStore struct {
	log  *slog.Logger
	keys *keyring.Keyring
	st   *repository.Store
}

func openKeyedStore(ctx context.Context, args []string) (*keyedStore, error) {
	cfg, err := config.Load(ctx, args, nil)
	if err != nil {
		return nil, err
	}
	log := newLogger(cfg.LogLevel)
	keys, err := app.LoadKeyring(cfg, log)
	if err != nil {
		return nil, err
	}
	st, err := app.OpenStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := app.CheckKeyIdentity(ctx, st, keys); err != nil {
		st.Close()
		return nil, err
	}
	return &keyedStore{log: log, keys: keys, st: st}, nil
}

// rotateKeys re-encrypts every row under the primary master key (the first
// entry of MCPAUTH_MASTER_KEYS) and prints the row count per key id. It is
// idempotent and can be interrupted and run again.
func rotateKeys(ctx context.Context, args []string, out io.Writer) error {
	ks, err := openKeyedStore(ctx, args)
	if err != nil {
		return err
	}
	defer ks.st.Close()
	if err := app.CheckKeysInUse(ctx, ks.st, ks.keys); err != nil {
		return err
	}
	r := rotation.New(ks.st, ks.keys, ks.log)
	var rep *rotation.Report
	for pass := 1; pass <= 5; pass++ {
		if rep, err = r.Run(ctx); err != nil {
			return err
		}
		fmt.Fprintf(out, "pass %d: re-encrypted %d providers, %d credentials, %d client registrations (%d changed concurrently)\n",
			pass, rep.Providers, rep.Credentials, rep.Registrations, rep.Skipped)
		if rep.Skipped == 0 {
			break
		}
	}
	printUsage(out, rep.Usage, ks.keys)
	return nil
}

// keyUsage prints how many rows each key id encrypts.
func keyUsage(ctx context.Context, args []string, out io.Writer) error {
	ks, err := openKeyedStore(ctx, args)
	if err != nil {
		return err
	}
	defer ks.st.Close()
	usage, err := ks.st.KeyUsage(ctx)
	if err != nil {
		return err
	}
	printUsage(out, usage, ks.keys)
	return nil
}

func printUsage(out io.Writer, usage map[uint32]int64, keys *keyring.Keyring) {
	ids := keys.IDs()
	for id := range usage {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		mark := ""
		if id == keys.PrimaryID() {
			mark = " (primary)"
		}
		fmt.Fprintf(out, "key %d%s: %d rows\n", id, mark, usage[id])
	}
	for _, id := range ids {
		if id != keys.PrimaryID() && usage[id] == 0 {
			fmt.Fprintf(out, "key %d encrypts no row: it can be removed from the configuration\n", id)
		}
	}
}

// newCallerKey prints a fresh API key and the callers-file entry for it.
func newCallerKey(_ context.Context, args []string, out io.Writer) error {
	if len(args) > 0 {
		return fmt.Errorf("new-caller-key takes no arguments (got %q)", args[0])
	}
	key, hash, err := caller.NewKey()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "key (give it to the caller; it is not stored): %s\n", key)
	fmt.Fprintf(out, "callers file entry: {\"name\": \"NAME\", \"key_sha256\": %q, \"tenants\": [\"TENANT\"], \"permissions\": [\"providers.read\"]}\n", hash)
	return nil
}

// newMasterKey prints a key spec with one fresh key; "-id N" picks the id
// (use a new, higher id when rotating: put the new entry first).
func newMasterKey(_ context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("new-master-key", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	id := fs.Uint("id", 1, "key id")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *id == 0 || *id > math.MaxUint32 {
		return fmt.Errorf("-id must be between 1 and %d", uint32(math.MaxUint32))
	}
	spec, err := keyring.GenerateSpec(uint32(*id))
	if err != nil {
		return err
	}
	fmt.Fprintln(out, spec)
	return nil
}

// healthcheck asks the local HTTP port's /readyz (for container health
// checks, where no curl exists): 200 only when the database and the state
// store answer. It dials the HTTP address's host when that names one
// address, else the loopback.
func healthcheck(ctx context.Context, args []string, _ io.Writer) error {
	cfg, err := config.Load(ctx, args, nil)
	if err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(cfg.HTTPAddr)
	if err != nil {
		return err
	}
	if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	scheme := "http"
	client := &http.Client{Timeout: 3 * time.Second}
	if cfg.TLS() {
		scheme = "https"
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // loopback self-check only
	}
	resp, err := client.Get(scheme + "://" + net.JoinHostPort(host, port) + "/readyz")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("readyz answered %d", resp.StatusCode)
	}
	return nil
}

// printAdminKey prints the admin key generated into the data directory, so
// that a container without a shell can hand it out
// ("docker compose exec mcpauth /mcpauthd print-admin-key"). It creates
// nothing: before the first start there is no key to print.
func printAdminKey(ctx context.Context, args []string, out io.Writer) error {
	cfg, err := config.Load(ctx, args, nil)
	if err != nil {
		return err
	}
	if cfg.CallersFile != "" {
		return fmt.Errorf("MCPAUTH_CALLERS_FILE is set: callers authenticate with the keys of %q, there is no generated admin key", cfg.CallersFile)
	}
	key, err := caller.ReadAdminKey(app.AdminKeyPath(cfg))
	if err != nil {
		return err
	}
	fmt.Fprintln(out, key)
	return nil
}

// serverGCPercent is the garbage collector's target when GOGC is not set:
// the heap may grow to three times its live size between collections
// instead of twice. The service's live heap is small (caches bounded in
// entries, idle RSS about 45 MB), and collections were 7-12% of its CPU on
// the hot paths; at 200, server CPU per StartAuthorization fell from about
// 197 to 142 us and GetAccessToken's p99 from 11.4 to 9.1 ms side by side
// (BenchmarkHotPathsBinaries, ghz, 64 callers). GOGC and GOMEMLIMIT, when
// set, decide as usual.
const serverGCPercent = 200

func serverGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(serverGCPercent)
	}
}
