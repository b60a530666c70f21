// Command mcpauthd is the mcpauth service: a multi-tenant credential broker
// for MCP servers. "mcpauthd" (or "mcpauthd serve") runs the gRPC server and
// the HTTP gateway; the other subcommands are operator tools (see commands
// below, or "mcpauthd help"). Every subcommand answers -h and --help with
// its help text, exit status 0 and no other effect.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/mcpauth/mcpauth/config"
	"github.com/mcpauth/mcpauth/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mcpauthd:", err)
		os.Exit(1)
	}
}

// command is one subcommand: what it does, and whether it takes the
// service's configuration (environment and flags).
type command struct {
	name    string
	summary string
	// usage is the argument synopsis after the name.
	usage string
	// config: the command reads the MCPAUTH_* environment and the
	// configuration flags.
	config bool
	// flags describes the command's own flags, if any.
	flags string
	run   func(ctx context.Context, args []string, out io.Writer) error
}

var commands = []command{
	{name: "serve", summary: "run the gRPC server and the HTTP gateway until SIGINT or SIGTERM (the default)",
		usage: "[flags]", config: true, run: serve},
	{name: "migrate", summary: "apply the database migrations and exit",
		usage: "[flags]", config: true, run: migrate},
	{name: "rotate-keys", summary: "re-encrypt every row under the primary master key (idempotent, resumable)",
		usage: "[flags]", config: true, run: rotateKeys},
	{name: "key-usage", summary: "print how many rows each master key id encrypts",
		usage: "[flags]", config: true, run: keyUsage},
	{name: "new-caller-key", summary: "print a new API key and its callers-file entry (the key is not stored)",
		run: newCallerKey},
	{name: "new-master-key", summary: "print a fresh master key spec for MCPAUTH_MASTER_KEYS",
		usage: "[-id N]", flags: "  -id uint\n    \tkey id; use a new, higher id when rotating and put the new entry first (default 1)\n",
		run: newMasterKey},
	{name: "print-admin-key", summary: "print the generated admin API key of the data directory (<data dir>/admin.key)",
		usage: "[flags]", config: true, run: printAdminKey},
	{name: "healthcheck", summary: "exit 0 when the local HTTP port answers /readyz with 200 (for container health checks)",
		usage: "[flags]", config: true, run: healthcheck},
	{name: "version", summary: "print the build's version", run: printVersion},
}

func printVersion(_ context.Context, args []string, out io.Writer) error {
	if len(args) > 0 {
		return fmt.Errorf("version takes no arguments (got %q)", args[0])
	}
	fmt.Fprintln(out, version.String())
	return nil
}

// run dispatches to a subcommand; serving is the default.
func run(ctx context.Context, args []string, out io.Writer) error {
	name := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	if name == "help" {
		if len(args) == 0 {
			printHelp(out)
			return nil
		}
		name, args = args[0], []string{"-h"}
	}
	for _, c := range commands {
		if c.name != name {
			continue
		}
		if wantsHelp(args) {
			c.printHelp(out)
			return nil
		}
		return c.run(ctx, args, out)
	}
	return fmt.Errorf("unknown command %q (run 'mcpauthd help' for the list)", name)
}

// wantsHelp reports whether args ask for help (before any "--").
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help", "--h":
			return true
		}
	}
	return false
}

func printHelp(w io.Writer) {
	fmt.Fprint(w, "mcpauthd: the mcpauth service, a multi-tenant credential broker for MCP servers.\n\n"+
		"usage: mcpauthd [command] [flags]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-16s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\n'mcpauthd <command> -h' describes a command. The configuration is read from MCPAUTH_* environment\n"+
		"variables (see the README); the flags of 'mcpauthd serve -h' override the first few.\n")
}

func (c command) printHelp(w io.Writer) {
	fmt.Fprintf(w, "usage: mcpauthd %s %s\n\n%s.\n", c.name, c.usage, c.summary)
	if c.flags != "" {
		fmt.Fprintf(w, "\nflags:\n%s", c.flags)
	}
	if c.config {
		fmt.Fprint(w, "\nThe configuration comes from MCPAUTH_* environment variables (see the README); these flags override them:\n")
		config.PrintFlags(w)
	}
}
