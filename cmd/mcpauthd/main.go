// Command mcpauthd is the mcpauth service: a multi-tenant credential broker
// for MCP servers. "mcpauthd" (or "mcpauthd serve") runs the gRPC server and
// the HTTP gateway; the other subcommands are operator tools:
//
//	mcpauthd migrate          apply database migrations and exit
//	mcpauthd rotate-keys      re-encrypt every row under the primary key
//	mcpauthd key-usage        count rows per encryption key id
//	mcpauthd new-caller-key   print a new API key and its hash for the callers file
//	mcpauthd new-master-key   print a fresh master key spec for MCPAUTH_MASTER_KEYS
//	mcpauthd healthcheck      exit 0 when the local HTTP port answers /readyz
//	mcpauthd version          print the build's version
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/mcpauth/mcpauth/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mcpauthd:", err)
		os.Exit(1)
	}
}

// run dispatches to a subcommand; serving is the default.
func run(ctx context.Context, args []string) error {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(ctx, args)
	case "migrate":
		return migrate(ctx, args)
	case "rotate-keys":
		return rotateKeys(ctx, args)
	case "key-usage":
		return keyUsage(ctx, args)
	case "new-caller-key":
		return newCallerKey()
	case "new-master-key":
		return newMasterKey(args)
	case "healthcheck":
		return healthcheck(ctx, args)
	case "version":
		fmt.Println(version.String())
		return nil
	default:
		return fmt.Errorf("unknown command %q (serve, migrate, rotate-keys, key-usage, new-caller-key, new-master-key, healthcheck, version)", cmd)
	}
}
