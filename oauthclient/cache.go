package oauthclient

import (
	"container/list"
	"strings"
	"sync"
	"time"
)

// fetchResult is the outcome of a metadata GET that is worth caching: a 200
// with its body, or a 4xx meaning "no document here". Network errors, 429
// and 5xx answers are never cached.
type fetchResult struct {
	status      int
	contentType string
	body        []byte
}

type cacheEntry struct {
	key     string
	res     fetchResult
	expires time.Time
}

// metadataCache is a small LRU bounded by entry count and by the total size
// of the cached bodies, so hostile servers cannot grow it without limit.
type metadataCache struct {
	mu         sync.Mutex
	maxEntries int
	maxBytes   int
	bytes      int
	ll         *list.List
	items      map[string]*list.Element
}

func newMetadataCache(maxEntries, maxBytes int) *metadataCache {
	return &metadataCache{
		maxEntries: maxEntries,
		maxBytes:   maxBytes,
		ll:         list.New(),
		items:      make(map[string]*list.Element),
	}
}

func (m *metadataCache) get(key string, now time.Time) (fetchResult, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.items[key]
	if !ok {
		return fetchResult{}, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		m.remove(el)
		return fetchResult{}, false
	}
	m.ll.MoveToFront(el)
	return e.res, true
}

func (m *metadataCache) put(key string, res fetchResult, expires time.Time) {
	size := len(res.body)
	if size > m.maxBytes {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.items[key]; ok {
		m.remove(el)
	}
	el := m.ll.PushFront(&cacheEntry{key: key, res: res, expires: expires})
	m.items[key] = el
	m.bytes += size
	for m.ll.Len() > m.maxEntries || m.bytes > m.maxBytes {
		m.remove(m.ll.Back())
	}
}

func (m *metadataCache) remove(el *list.Element) {
	e := m.ll.Remove(el).(*cacheEntry)
	delete(m.items, e.key)
	m.bytes -= len(e.res.body)
}

func (m *metadataCache) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ll.Len()
}

// resultCache keeps validated discovery results (see Client.Discover).
// Callers get a copy, so they cannot change the cached value.
type resultCache struct {
	mu sync.Mutex
	m  map[string]resultEntry
}

type resultEntry struct {
	md      Metadata
	expires time.Time
}

// maxResults bounds the result cache; past it, it is emptied.
const maxResults = 1024

func (r *resultCache) get(key string, now time.Time) (*Metadata, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.m[key]
	if !ok || !now.Before(e.expires) {
		return nil, false
	}
	md := e.md
	return &md, true
}

func (r *resultCache) put(key string, md *Metadata, expires time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil || len(r.m) >= maxResults {
		r.m = map[string]resultEntry{}
	}
	r.m[key] = resultEntry{md: *md, expires: expires}
}

// delete drops key, if cached.
func (m *metadataCache) delete(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.items[key]; ok {
		m.remove(el)
	}
}

// drop removes and returns the results whose key starts with prefix.
func (r *resultCache) drop(prefix string) []Metadata {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Metadata
	for k, e := range r.m {
		if strings.HasPrefix(k, prefix) {
			out = append(out, e.md)
			delete(r.m, k)
		}
	}
	return out
}
