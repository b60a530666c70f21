package statestore

import (
	"context"
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
// Each Put is still its own putScript call, atomic on its own and safe to
// retry as before; only their transport is shared.
func newPutPipeline(c redis.UniversalClient) *batch.Runner[*putRequest] {
	return &batch.Runner[*putRequest]{Max: putPipelineMax, InFlight: putPipelineInFlight,
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

// send runs reqs: alone as a plain script call, or as one pipeline of
// EVALSHA calls; one the server does not know the script for (NOSCRIPT,
// after a restart or on a new node) is sent again alone, which loads it.
func send(c redis.UniversalClient, reqs []*putRequest) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(reqs[0].ctx), putPipelineTimeout)
	defer cancel()
	finish := func(r *putRequest, n int64, err error) {
		switch {
		case err != nil:
			r.err = wrap("put", err)
		case n == 0:
			r.err = ErrExists
		}
		close(r.done)
	}
	one := func(r *putRequest) {
		n, err := putScript.Run(ctx, c, []string{r.key}, r.value, r.ttlMS).Int64()
		finish(r, n, err)
	}
	if len(reqs) == 1 {
		one(reqs[0])
		return
	}
	pipe := c.Pipeline()
	cmds := make([]*redis.Cmd, len(reqs))
	for i, r := range reqs {
		cmds[i] = pipe.EvalSha(ctx, putScript.Hash(), []string{r.key}, r.value, r.ttlMS)
	}
	_, _ = pipe.Exec(ctx) // each command carries its own outcome
	for i, r := range reqs {
		n, err := cmds[i].Int64()
		if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			one(r)
			continue
		}
		finish(r, n, err)
	}
}
