// Command mcpauth-demo runs, on this machine, an OAuth-protected MCP server
// and its authorization server, for the README's walk-through: the same
// servers the end-to-end tests use (e2e/internal/testauthz: ory/fosite for
// OAuth 2.1 with PKCE and dynamic client registration, the official MCP
// go-sdk for the server and its bearer-token middleware and RFC 9728
// metadata). The authorization server shows a consent page. It prints what
// mcpauthd needs to reach them and runs until interrupted.
//
//	go run ./e2e/cmd/mcpauth-demo [-as-addr 127.0.0.1:9400] [-mcp-addr 127.0.0.1:9401]
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
	"os"
	"os/signal"
	"syscall"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
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
	user := fs.String("user", "demo-user", "the user the authorization server signs in")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: mcpauth-demo [flags]\n\nRuns an OAuth-protected MCP server and its authorization server (with a consent page) until interrupted.")
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
	host, _, _ := net.SplitHostPort(*mcpAddr)
	fmt.Fprintf(stdout, `mcpauth demo running (Ctrl-C stops it)
  MCP server:            %s   (tools: echo, add, whoami, ...; needs a bearer token)
  authorization server:  %s   (consent page as %q; dynamic client registration)

mcpauthd reaches these servers on a loopback address over plain http, which its
SSRF guard refuses unless allowed. In the shell that runs mcpauthd:

  export MCPAUTH_EGRESS_ALLOW=%s

(MCPAUTH_PUBLIC_URL, the address browsers and this authorization server use to
reach mcpauthd's callback, defaults to http://localhost:<port of MCPAUTH_HTTP_ADDR>.)
`, mcp.URL(), as.URL, *user, host)
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
	as = testauthz.NewAuthServer(tb, testauthz.AuthServerOptions{Addr: asAddr, DCR: true, Consent: true, User: user, IssParameter: true})
	mcp = testauthz.NewMCPServer(tb, testauthz.MCPServerOptions{Addr: mcpAddr, Auth: as})
	return as, mcp, nil
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
