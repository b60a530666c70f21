package server

import (
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"

	"github.com/mcpauth/mcpauth/apperr"
)

// requestCodec is the gRPC server's codec: the proto codec, except that a
// request message which does not decode (malformed wire data, invalid UTF-8
// in a string field) is the caller's fault, INVALID_ARGUMENT, where grpc-go
// answers INTERNAL.
//
// grpc-go wraps any Unmarshal error in an INTERNAL status of its own, so the
// codec cannot return the right status itself: it reports success, remembers
// the message as undecodable, and the interceptors (which every request
// passes, before authentication) refuse it.
type requestCodec struct {
	encoding.CodecV2
	undecoded sync.Map // request message pointer -> struct{}
	// pending counts entries of undecoded, so check skips the map (and
	// its lock after a store) on the common path: nothing failed to decode.
	pending atomic.Int64
}

func newRequestCodec() *requestCodec {
	return &requestCodec{CodecV2: encoding.GetCodecV2(proto.Name)}
}

func (c *requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if err := c.CodecV2.Unmarshal(data, v); err != nil {
		c.pending.Add(1)
		c.undecoded.Store(v, struct{}{})
	}
	return nil
}

// check reports INVALID_ARGUMENT if req failed to decode, and forgets it.
// The message quotes nothing of the request.
func (c *requestCodec) check(req any) error {
	if c.pending.Load() == 0 {
		return nil
	}
	if _, bad := c.undecoded.LoadAndDelete(req); bad {
		c.pending.Add(-1)
		return apperr.Invalid("", "the request message does not decode: malformed protobuf or invalid UTF-8 in a string field")
	}
	return nil
}
