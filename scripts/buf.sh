#!/usr/bin/env bash
# Runs the buf pinned in tools/buf/go.mod from the project root with the given
# arguments (scripts/buf.sh lint; scripts/gen.sh runs scripts/buf.sh generate),
# after installing the googleapis protos buf.yaml names (scripts/protodeps.sh).
# The generators are modules of their own (tools/buf, tools/protoc) so their
# dependencies stay out of the service's go.mod. GOWORK=off because go.work
# (the service and e2e/) cannot be combined with -modfile; buf passes it on to
# the protoc plugins that buf.gen.yaml runs the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/protodeps.sh
export GOWORK=off
exec go tool -modfile=tools/buf/go.mod buf "$@"
