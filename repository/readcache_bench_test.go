package repository

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// The cached reads' own cost, without a database: the read behind a miss
// returns a fixed row. Run side by side before and after a change:
//
//	go test -run '^$' -bench ReadCache -count 6 ./repository/
//
// BenchmarkReadCacheHit is the per-read cost of a hit, from many
// goroutines. BenchmarkReadCacheHotAndCold reads a hot set of 1,000 keys
// nine times in ten and a stream of never-repeated keys otherwise, as a
// sweep over many providers does beside the busy ones: hot-misses/op is
// the fraction of hot reads that went to the database (0 while the cache
// keeps its hot entries).

// benchKeys returns n distinct provider keys.
func benchKeys(prefix string, n int) []cacheKey {
	keys := make([]cacheKey, n)
	for i := range keys {
		keys[i] = cacheKey{kind: 'p', tenant: "t", id: prefix + strconv.Itoa(i)}
	}
	return keys
}

func BenchmarkReadCacheHit(b *testing.B) {
	c := (&Store{}).NewCachedReads(time.Hour)
	row := &Provider{}
	read := func() (*Provider, error) { return row, nil }
	keys := benchKeys("p", 1000)
	for _, k := range keys {
		_, _ = cachedGet(c, k, read)
	}
	var next atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(7919))
		for pb.Next() {
			i++
			if _, err := cachedGet(c, keys[i%len(keys)], read); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkReadCacheHotAndCold(b *testing.B) {
	c := (&Store{}).NewCachedReads(time.Hour)
	row := &Provider{}
	var misses atomic.Int64
	hotRead := func() (*Provider, error) { misses.Add(1); return row, nil }
	coldRead := func() (*Provider, error) { return row, nil }
	hot := benchKeys("hot", 1000)
	cold := benchKeys("cold", 200_000)
	for _, k := range hot {
		_, _ = cachedGet(c, k, hotRead)
	}
	misses.Store(0)
	hotReads := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%10 == 9 {
			// A never-repeated key (the key space wraps only after
			// 2,000,000 iterations, far past the cache's bound).
			_, _ = cachedGet(c, cold[(i/10)%len(cold)], coldRead)
			continue
		}
		hotReads++
		_, _ = cachedGet(c, hot[i%len(hot)], hotRead)
	}
	if hotReads > 0 {
		b.ReportMetric(float64(misses.Load())/float64(hotReads), "hot-misses/op")
	}
}
