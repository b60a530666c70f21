// Package batch runs the work of concurrent callers in shared batches:
// while a batch is being run, the items added meanwhile queue, and the next
// run takes up to a maximum of them at once. A lone item runs at once, so
// batching adds no wait when the work keeps up; under load one round trip
// (a database statement, a Redis pipeline) serves many callers.
package batch

import (
	"runtime"
	"sync"
)

// Runner queues items and runs them in batches of at most Max, with at
// most InFlight runs at once. Run must answer every item of its batch
// (callers wait on something the item carries). The zero value is not
// ready: Max, InFlight and Run must be set.
type Runner[T any] struct {
	Max      int
	InFlight int
	Run      func(batch []T)
	// Gather, when set, has a run that would take fewer than Max items
	// yield the processor once first, so that callers already running
	// can join its batch: fewer, fuller batches, for a scheduling delay.
	Gather bool

	mu      sync.Mutex
	queue   []T
	running int
}

// Add queues item; a run starts when fewer than InFlight are under way.
func (r *Runner[T]) Add(item T) {
	r.mu.Lock()
	r.queue = append(r.queue, item)
	start := r.running < r.InFlight
	if start {
		r.running++
	}
	r.mu.Unlock()
	if start {
		go r.drain()
	}
}

// drain runs batches until the queue is empty.
func (r *Runner[T]) drain() {
	for {
		if r.Gather {
			r.mu.Lock()
			short := len(r.queue) < r.Max
			r.mu.Unlock()
			if short {
				runtime.Gosched()
			}
		}
		r.mu.Lock()
		n := min(len(r.queue), r.Max)
		if n == 0 {
			r.running--
			r.mu.Unlock()
			return
		}
		b := r.queue[:n:n]
		r.queue = r.queue[n:]
		if len(r.queue) == 0 {
			r.queue = nil
		}
		r.mu.Unlock()
		r.Run(b)
	}
}
