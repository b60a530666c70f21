// Command mcpauth-demo runs, on this machine, an OAuth-protected MCP server
// and its authorization server, for the README's walk-through: the same
// servers the end-to-end tests use (e2e/internal/testauthz: ory/fosite for
// OAuth 2.1 with PKCE and dynamic client registration, the official MCP
// go-sdk for the server and its bearer-token middleware and RFC 9728
// metadata). The authorization server shows a consent page and two demo-only
// controls that make the tokens it issued fail (testauthz's DemoControls). A
// webhook receiver (e2e/internal/webhookrecv) verifies the Standard Webhooks
// signature of each message mcpauth posts to it and prints a line for each.
// It prints what mcpauthd needs to reach them and runs until interrupted.
//
//	go run ./e2e/cmd/mcpauth-demo [-as-addr 127.0.0.1:9400] [-mcp-addr 127.0.0.1:9401] [-webhook-addr 127.0.0.1:9402]
//
// It lives in the e2e module so that nothing of it reaches the service's
// binary or go.mod.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	"github.com/mcpauth/mcpauth/e2e/internal/webhookrecv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mcpauth-demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mcpauth-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asAddr := fs.String("as-addr", envOr("MCPAUTH_DEMO_AS_ADDR", "127.0.0.1:9400"), "authorization server listen address (MCPAUTH_DEMO_AS_ADDR)")
	mcpAddr := fs.String("mcp-addr", envOr("MCPAUTH_DEMO_MCP_ADDR", "127.0.0.1:9401"), "MCP server listen address (MCPAUTH_DEMO_MCP_ADDR)")
	hookAddr := fs.String("webhook-addr", envOr("MCPAUTH_DEMO_WEBHOOK_ADDR", "127.0.0.1:9402"), "webhook receiver listen address (MCPAUTH_DEMO_WEBHOOK_ADDR)")
	user := fs.String("user", "demo-user", "the user the authorization server signs in")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: mcpauth-demo [flags]\n\nRuns an OAuth-protected MCP server, its authorization server (with a consent page) and a webhook receiver until interrupted.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	tb := &runTB{}
	defer tb.cleanup()
	as, mcp, err := start(tb, *asAddr, *mcpAddr, *user)
	if err != nil {
		return err
	}
	hook, err := startReceiver(tb, *hookAddr, stdout)
	if err != nil {
		return err
	}
	host, _, _ := net.SplitHostPort(*mcpAddr)
	fmt.Fprintf(stdout, `mcpauth demo running (Ctrl-C stops it)
  MCP server:            %s   (tools: echo, add, whoami, ...; needs a bearer token)
  authorization server:  %s   (consent page as %q; dynamic client registration)
                         POST /demo/revoke-access-tokens, /demo/expire-refresh-tokens: make its tokens fail
  webhook receiver:      %s   (POST /secret the endpoint's signing secret; GET /received)
  (the POSTs above need the header X-Demo-Control: 1, which no web page can send cross-site)

mcpauthd reaches these servers on a loopback address over plain http, which its
SSRF guard refuses unless allowed. In the shell that runs mcpauthd:

  export MCPAUTH_EGRESS_ALLOW=%s

(MCPAUTH_PUBLIC_URL, the address browsers and this authorization server use to
reach mcpauthd's callback, defaults to http://localhost:<port of MCPAUTH_HTTP_ADDR>,
or http://<its host>:<port> when MCPAUTH_HTTP_ADDR names a specific host.)
`, mcp.URL(), as.URL, *user, hook, host)
	<-ctx.Done()
	return nil
}

// start runs both servers; listen errors come back as errors.
func start(tb *runTB, asAddr, mcpAddr, user string) (as *testauthz.AuthServer, mcp *testauthz.MCPServer, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			err = errors.New(string(f))
		}
	}()
	as = testauthz.NewAuthServer(tb, testauthz.AuthServerOptions{Addr: asAddr, DCR: true, Consent: true, User: user, IssParameter: true,
		DemoControls: true})
	mcp = testauthz.NewMCPServer(tb, testauthz.MCPServerOptions{Addr: mcpAddr, Auth: as})
	return as, mcp, nil
}

// startReceiver serves a webhook receiver on addr that writes a line per
// message to log; it returns the URL to register as the endpoint.
func startReceiver(tb *runTB, addr string, log io.Writer) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("webhook receiver: %w", err)
	}
	srv := &http.Server{Handler: webhookrecv.New(log), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	tb.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String() + "/webhook", nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// fatal carries a Fatal message from the servers' constructors to start.
type fatal string

// runTB lets the test servers run outside a test: Fatal becomes an error
// from start, Cleanup runs when the demo exits.
type runTB struct{ cleanups []func() }

func (*runTB) Helper()                           {}
func (*runTB) Fatal(args ...any)                 { panic(fatal(fmt.Sprint(args...))) }
func (*runTB) Fatalf(format string, args ...any) { panic(fatal(fmt.Sprintf(format, args...))) }
func (t *runTB) Cleanup(f func())                { t.cleanups = append(t.cleanups, f) }

func (t *runTB) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}
