#!/usr/bin/env bash
# Installs the googleapis protos the API imports (google/api/annotations.proto,
# http.proto, field_behavior.proto) into .protodeps/ from the npm package
# google-proto-files, pinned here. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
version=6.0.1
dest=.protodeps
if [[ -f "$dest/.version" && "$(cat "$dest/.version")" == "$version" ]]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npm install --silent --no-audit --no-fund --prefix "$tmp" "google-proto-files@$version" >/dev/null
rm -rf "$dest"
mkdir -p "$dest/google/api"
for f in annotations http field_behavior; do
  cp "$tmp/node_modules/google-proto-files/google/api/$f.proto" "$dest/google/api/"
done
echo "$version" >"$dest/.version"
