package statestore

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mcpauth/mcpauth/internal/batch"
)

// newPutPipeline sends concurrent Puts to Redis pipelined: while a
// pipeline is in flight, the Puts asked for meanwhile queue, and the next
// pipeline carries up to putPipelineMax of them in one write and one read.
// A lone Put goes out at once, so pipelining adds no wait when Redis keeps
// up; under load (StartAuthorization stores a flow per call) one round trip
// and one pair of system calls serve many callers instead of one each, and
// Redis reads them in one go.
//
// Each Put is still its own SET NX PX, safe to retry (see send); only
// their transport is shared.
func newPutPipeline(c redis.UniversalClient) *batch.Runner[*putRequest] {
	return &batch.Runner[*putRequest]{Max: putPipelineMax, InFlight: putPipelineInFlight, Gather: true,
		Run: func(reqs []*putRequest) { send(c, reqs) }}
}

type putRequest struct {
	ctx   context.Context
	key   string
	value []byte
	ttlMS int64
	done  chan struct{}
	err   error
}

const (
	putPipelineMax = 64
	// putPipelineInFlight is one: the Puts asked for while a pipeline is
	// out form the next, bigger one (fewer round trips and system calls
	// on both sides than two smaller ones; see audit's writers).
	putPipelineInFlight = 1
	// putPipelineTimeout bounds one pipeline; it does not end with any one
	// caller's context, which the others did not choose (go-redis's read
	// and write timeouts bound it first).
	putPipelineTimeout = 10 * time.Second
)

// put stores value under key (a prefixed key) unless it exists: nil,
// ErrExists, or a wrapped Redis error.
func put(ctx context.Context, p *batch.Runner[*putRequest], key string, value []byte, ttlMS int64) error {
	req := &putRequest{ctx: ctx, key: key, value: value, ttlMS: ttlMS, done: make(chan struct{})}
	p.Add(req)
	select {
	case <-req.done:
		return req.err
	case <-ctx.Done():
		// The Put may still be carried out: a flow stored for nobody
		// expires with its TTL.
		return wrap("put", ctx.Err())
	}
}

// send runs reqs in one pipeline of SET NX PX commands. A SET that finds
// the key taken is followed by a GET of it (in one more pipeline, for all
// of them): a value equal to the request's own (a sealed, randomly nonced
// ciphertext: only this write produced it) means an earlier attempt of
// this same SET stored it and its answer was lost (go-redis sends a
// command again then), so it counts as stored. A plain SET costs Redis a
// third of a script call that does the same.
func send(c redis.UniversalClient, reqs []*putRequest) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(reqs[0].ctx), putPipelineTimeout)
	defer cancel()
	finish := func(r *putRequest, err error) {
		if err != nil {
			r.err = wrap("put", err)
		}
		close(r.done)
	}
	sets := make([]*redis.BoolCmd, len(reqs))
	if len(reqs) == 1 {
		r := reqs[0]
		sets[0] = c.SetNX(ctx, r.key, r.value, time.Duration(r.ttlMS)*time.Millisecond)
	} else {
		pipe := c.Pipeline()
		for i, r := range reqs {
			sets[i] = pipe.SetNX(ctx, r.key, r.value, time.Duration(r.ttlMS)*time.Millisecond)
		}
		_, _ = pipe.Exec(ctx) // each command carries its own outcome
	}
	var taken []int
	for i, r := range reqs {
		switch stored, err := sets[i].Result(); {
		case err != nil:
			finish(r, err)
		case stored:
			finish(r, nil)
		default:
			taken = append(taken, i)
		}
	}
	if len(taken) == 0 {
		return
	}
	pipe := c.Pipeline()
	gets := make([]*redis.StringCmd, len(taken))
	for j, i := range taken {
		gets[j] = pipe.Get(ctx, reqs[i].key)
	}
	_, _ = pipe.Exec(ctx)
	for j, i := range taken {
		r := reqs[i]
		switch v, err := gets[j].Result(); {
		case errors.Is(err, redis.Nil):
			r.err = ErrExists // taken, and gone again since
			close(r.done)
		case err != nil:
			finish(r, err)
		case v == string(r.value):
			finish(r, nil)
		default:
			r.err = ErrExists
			close(r.done)
		}
	}
}
