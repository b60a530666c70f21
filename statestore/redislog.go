package statestore

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// RouteRedisLogs sends go-redis's own log lines (a connection it failed to
// close, a Sentinel failover, a feature it could not set up) to log as
// warnings, instead of go-redis's default: plain text on stderr, which a
// JSON log reader cannot parse. go-redis has one logger per process: the
// last call wins.
//
// The lines are go-redis's format strings filled with option values,
// addresses (host:port), master names and server or network errors; none
// quotes a password or a URL (checked against go-redis v9.23's sources: no
// Printf call formats Options.Password, the Sentinel password or a
// credentials provider's output, and go-redis parses no URL after
// NewRedisFromURL has).
func RouteRedisLogs(log *slog.Logger) {
	redis.SetLogger(redisLogger{log: log})
}

// redisLogger adapts a *slog.Logger to go-redis's logging interface.
type redisLogger struct{ log *slog.Logger }

// Printf logs one go-redis line as a warning; go-redis gives no level.
func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "redis client", "detail", fmt.Sprintf(format, v...))
}
