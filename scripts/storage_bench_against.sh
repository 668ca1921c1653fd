#!/usr/bin/env bash
# Runs the study-storage bench (`cargo bench -p kiln-tune --bench study_storage`) on an earlier commit and on the working tree,
# one after the other on the same machine, and prints both tables' lines. Used to check that Optuna's schema keeps
# reading a 1,000-trial study within 2x of kiln's earlier tables:
#   scripts/storage_bench_against.sh c8091e7
# The earlier commit is checked out in a temporary git worktree that shares the cargo target directory and .deps.
set -euo pipefail
rev=${1:?usage: scripts/storage_bench_against.sh REV}
root=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d)/kiln-$rev
git -C "$root" worktree add --detach "$tree" "$rev" >/dev/null
trap 'git -C "$root" worktree remove --force "$tree"' EXIT
ln -sfn "$root/.deps" "$tree/.deps"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
run() { (cd "$1" && cargo bench --locked -p kiln-tune --bench study_storage -- --noplot 2>&1 | grep -E '^(sqlite|postgres)_|time:'); }
echo "== $rev"
run "$tree"
echo "== working tree"
run "$root"
