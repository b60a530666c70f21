package batch

import (
	"sync"
	"sync/atomic"
	"testing"
)

// TestRunnerAnswersEveryItemOnce: items added concurrently are each run
// exactly once, in batches no larger than Max, with no more than InFlight
// runs at a time.
func TestRunnerAnswersEveryItemOnce(t *testing.T) {
	for _, gather := range []bool{false, true} {
		t.Run(map[bool]string{false: "at once", true: "gathering"}[gather], func(t *testing.T) {
			runnerAnswersEveryItemOnce(t, gather)
		})
	}
}

func runnerAnswersEveryItemOnce(t *testing.T, gather bool) {
	type item struct {
		n    int
		done chan struct{}
	}
	var inFlight, maxInFlight, biggest atomic.Int64
	seen := make([]atomic.Int64, 2000)
	r := &Runner[*item]{Max: 16, InFlight: 2, Gather: gather, Run: func(b []*item) {
		cur := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := maxInFlight.Load()
			if cur <= m || maxInFlight.CompareAndSwap(m, cur) {
				break
			}
		}
		if int64(len(b)) > biggest.Load() {
			biggest.Store(int64(len(b)))
		}
		for _, it := range b {
			seen[it.n].Add(1)
			close(it.done)
		}
	}}
	var wg sync.WaitGroup
	for i := range seen {
		wg.Add(1)
		go func() {
			defer wg.Done()
			it := &item{n: i, done: make(chan struct{})}
			r.Add(it)
			<-it.done
		}()
	}
	wg.Wait()
	for i := range seen {
		if n := seen[i].Load(); n != 1 {
			t.Errorf("item %d ran %d times", i, n)
		}
	}
	if m := maxInFlight.Load(); m > 2 {
		t.Errorf("%d runs at once, want at most 2", m)
	}
	if b := biggest.Load(); b > 16 {
		t.Errorf("a batch of %d, want at most 16", b)
	}
}
