//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package repository

import (
	"errors"
	"time"
)

// leadFile is the SQLite lead of the fan-out where flock is available
// (leadfile_flock.go); here there is none, and the lease alone decides.
type leadFile struct{}

// flockLead reports whether a SQLite file has a fan-out lead here.
const flockLead = false

// errNoFlock is why a SQLite file has no lead here.
var errNoFlock = errors.New("no flock on this platform")

// leadFilePath fails: no lead without flock.
func leadFilePath(string) (string, error) { return "", errNoFlock }

// openLeadFile fails: no lead without flock.
func openLeadFile(string) (*leadFile, error) { return nil, errNoFlock }

func (*leadFile) lead(time.Time, time.Duration) (bool, error) { return false, nil }
func (*leadFile) drop()                                       {}
func (*leadFile) close()                                      {}
