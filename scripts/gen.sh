#!/usr/bin/env bash
# Regenerates gen/ from proto/ with the pinned local tools.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/protodeps.sh
rm -rf gen
go tool buf generate
