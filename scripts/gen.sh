#!/usr/bin/env bash
# Regenerates gen/ from proto/ with the pinned local tools (tools/buf, tools/protoc).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf gen api/openapi/*.swagger.json
scripts/buf.sh generate
