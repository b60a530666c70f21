//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package repository

import "time"

// leadFile is the SQLite lead of the fan-out where flock is available
// (leadfile_flock.go); here there is none, and the lease alone decides.
type leadFile struct{}

// flockLead reports whether a SQLite file has a fan-out lead here.
const flockLead = false

// openLeadFile returns nil: no lead without flock.
func openLeadFile(string) *leadFile { return nil }

func (*leadFile) lead(time.Time, time.Duration) (bool, error) { return false, nil }
func (*leadFile) drop()                                       {}
func (*leadFile) close()                                      {}
