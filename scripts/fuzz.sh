#!/usr/bin/env bash
# Runs every fuzz target of the root module (not e2e/) for a short time:
# FUZZTIME per target (default 5s), FUZZPARALLEL workers (default 2), one
# target per go test invocation (go test fuzzes one target at a time).
# Packages are those whose _test.go files declare a func Fuzz; the targets
# are what go test -list reports for them. The first failure stops the run
# and names the crasher go test wrote under <package>/testdata/fuzz/; commit
# it there and it becomes a regression case of the normal go test run.
# FUZZPKG (a regexp on the import path) narrows the packages.
set -euo pipefail
cd "$(dirname "$0")/.."

fuzztime=${FUZZTIME:-5s}
parallel=${FUZZPARALLEL:-2}
pkgfilter=${FUZZPKG:-.}

# Packages of the root module with a fuzz target in a test file.
pkgs=()
while read -r dir path; do
  if grep -qs '^func Fuzz' "$dir"/*_test.go && [[ "$path" =~ $pkgfilter ]]; then
    pkgs+=("$path")
  fi
done < <(go list -f '{{.Dir}} {{.ImportPath}}' ./...)
if [[ ${#pkgs[@]} -eq 0 ]]; then
  echo "fuzz: no fuzz targets found"; exit 1
fi

# go test -list prints a package's matching names, then its "ok" line.
targets=()
names=()
while read -r line; do
  case "$line" in
    Fuzz*) names+=("$line") ;;
    ok*)
      pkg=$(awk '{print $2}' <<<"$line")
      for n in ${names[@]+"${names[@]}"}; do targets+=("$pkg $n"); done
      names=()
      ;;
    FAIL*|panic*) echo "fuzz: go test -list failed: $line"; exit 1 ;;
  esac
done < <(go test -list '^Fuzz' "${pkgs[@]}")
if [[ ${#targets[@]} -eq 0 ]]; then
  echo "fuzz: go test -list found no fuzz targets"; exit 1
fi

echo "fuzz: ${#targets[@]} targets, $fuzztime each, $parallel workers"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$SECONDS
i=0
for t in "${targets[@]}"; do
  read -r pkg name <<<"$t"
  i=$((i + 1))
  printf 'fuzz [%d/%d] %s %s\n' "$i" "${#targets[@]}" "$pkg" "$name"
  t0=$SECONDS
  ok=false
  for attempt in 1 2; do
    if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" -parallel "$parallel" "$pkg" >"$log" 2>&1; then
      ok=true; break
    fi
    # The fuzzing engine itself sometimes stops a run at -fuzztime with
    # "context deadline exceeded" while a worker is mid-input, writing no
    # crasher: that says nothing about the code, so the target runs once
    # more. Anything else (a crasher, a build or seed failure) fails now.
    if grep -q 'Failing input written to' "$log" || ! grep -q 'context deadline exceeded' "$log"; then
      break
    fi
    echo "  the fuzzing engine stopped at its deadline without a crasher; running the target again"
  done
  if ! $ok; then
    cat "$log"
    dir=$(go list -f '{{.Dir}}' "$pkg")
    echo
    echo "fuzz: $pkg $name FAILED"
    crasher=$(sed -n 's/.*Failing input written to \(testdata\/fuzz\/[^ ]*\).*/\1/p' "$log" | tail -n 1)
    if [[ -n "$crasher" ]]; then
      echo "fuzz: crasher written to ${dir#"$PWD"/}/$crasher"
      echo "fuzz: re-run with: go test -run '^${name}/$(basename "$crasher")\$' $pkg"
    fi
    exit 1
  fi
  { grep '^fuzz: elapsed' "$log" | tail -n 1; grep '^ok' "$log"; } | sed 's/^/  /' || true
  printf '  %ds\n' "$((SECONDS - t0))"
done
echo "fuzz: all ${#targets[@]} targets passed in $((SECONDS - start))s"
