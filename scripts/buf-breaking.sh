#!/usr/bin/env bash
# Fails when proto/ breaks the wire or source compatibility (buf.yaml's
# breaking rules, FILE) of the API on main. The base is, on main itself, the
# previous commit of main's first-parent history (what the last merge
# changed); on any other branch, the merge-base with main (what the branch
# changes). BASE=<commit> overrides. Offline: the base's protos are taken
# from git, the googleapis imports from .protodeps, and the pinned buf builds
# both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/protodeps.sh

main=""
for ref in main origin/main refs/remotes/origin/main; do
  if git rev-parse -q --verify "$ref^{commit}" >/dev/null; then main=$ref; break; fi
done
base=${BASE:-}
if [[ -z "$base" ]]; then
  if [[ -z "$main" ]]; then
    echo "buf breaking: no main branch in this clone and no BASE given: skipped"; exit 0
  fi
  head=$(git rev-parse HEAD)
  if [[ "$head" == "$(git rev-parse "$main")" ]]; then
    if ! base=$(git rev-parse -q --verify "HEAD^1"); then
      echo "buf breaking: main has a single commit: nothing to compare"; exit 0
    fi
  else
    base=$(git merge-base HEAD "$main")
  fi
fi
if ! git cat-file -e "$base:proto" 2>/dev/null; then
  echo "buf breaking: $base has no proto/: nothing to compare"; exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive "$base" proto buf.yaml | tar -x -C "$tmp"
cp -R .protodeps "$tmp/.protodeps"
echo "buf breaking: proto/ against $(git rev-parse --short "$base")"
scripts/buf.sh breaking --against "$tmp"
