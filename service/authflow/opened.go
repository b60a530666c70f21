package authflow

import (
	"sync"

	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/vault"
)

// openedMax bounds each memo of opened; past it, the memo is emptied.
const openedMax = 4096

// opened remembers the decryption of the rows the cached reads hand out.
// While its cache entry lives, a cached read returns the same row (the same
// pointer), and a row decrypts to the same thing every time, so a burst of
// starts of one provider decrypts its row and its client registration (and
// decodes their JSON) once instead of once per start. Keying by the row's
// pointer ties each memo entry to exactly the row it was opened from: a row
// read again (changed or not) is a new pointer and is decrypted again, so
// the memo is never staler than the reads themselves. The maps hold their
// keys, so a pointer is never reused for another row while remembered.
type opened struct {
	mu        sync.Mutex
	providers map[*repository.Provider]*vault.Provider
	regs      map[*repository.ClientRegistration]*oauthclient.Registration
}

func newOpened() *opened {
	return &opened{providers: map[*repository.Provider]*vault.Provider{}, regs: map[*repository.ClientRegistration]*oauthclient.Registration{}}
}

// remember stores v under k in m, emptying m first when it is full.
func remember[K comparable, V any](o *opened, m map[K]V, k K, v V) {
	o.mu.Lock()
	if len(m) >= openedMax {
		clear(m)
	}
	m[k] = v
	o.mu.Unlock()
}

// provider returns row decrypted. The result is shared: callers must not
// modify it.
func (o *opened) provider(c vault.Cipher, row *repository.Provider) (*vault.Provider, error) {
	o.mu.Lock()
	d, ok := o.providers[row]
	o.mu.Unlock()
	if ok {
		return d, nil
	}
	d, err := vault.OpenProvider(c, row)
	if err != nil {
		return nil, err
	}
	remember(o, o.providers, row, d)
	return d, nil
}

// registration returns row decrypted, as a copy the caller may modify
// (its slices stay shared and must not be).
func (o *opened) registration(c vault.Cipher, row *repository.ClientRegistration) (*oauthclient.Registration, error) {
	o.mu.Lock()
	reg, ok := o.regs[row]
	o.mu.Unlock()
	if !ok {
		var err error
		if reg, err = vault.OpenRegistration(c, row); err != nil {
			return nil, err
		}
		remember(o, o.regs, row, reg)
	}
	cp := *reg
	return &cp, nil
}
