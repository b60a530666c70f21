// Package version reports the build of the running binary: the version the
// release build stamps with
//
//	go build -ldflags "-X github.com/mcpauth/mcpauth/version.stamped=v1.2.3" ./cmd/mcpauthd
//
// or else what the Go toolchain recorded (the module version of a
// "go install ...@v1.2.3", or the VCS revision of a build in a checkout).
package version

import (
	"runtime/debug"
	"sync"
)

// stamped is set at link time with -ldflags -X; empty otherwise.
var stamped string

var (
	once     sync.Once
	resolved string
)

// String returns the build's version: the stamped one, else the module
// version, else "devel+<12 hex of the commit>[-dirty]", else "devel".
func String() string {
	once.Do(func() {
		info, _ := debug.ReadBuildInfo()
		resolved = resolve(stamped, info)
	})
	return resolved
}

// resolve picks the version from a stamp and the build information.
func resolve(stamp string, info *debug.BuildInfo) string {
	if stamp != "" {
		return stamp
	}
	if info == nil {
		return "devel"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	v := "devel+" + rev
	if dirty {
		v += "-dirty"
	}
	return v
}
