#!/usr/bin/env bash
# The plugin-boundary benchmark: bench/boundary.sh [plugin-boundary options]
#
# Builds the no-op pushkin library (bench/noop-pushkin) and the harness (bench/boundary) in
# release mode, waits for an idle machine (as bench/run_bench.sh does: at most IDLE_MAX_BUSY
# core-% over 1 s, up to IDLE_WAIT_S seconds), then runs target/release/plugin-boundary, which
# times a no-op dispatch through the real cdylib path against the same work in-process.
# Exit status: the harness's (0 target met, 1 not met, 2 setup error).
# Environment: IDLE_MAX_BUSY=15 IDLE_WAIT_S=120 SKIP_BUILD=1
set -euo pipefail
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
IDLE_MAX_BUSY="${IDLE_MAX_BUSY:-15}"
IDLE_WAIT_S="${IDLE_WAIT_S:-120}"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$REPO_DIR" && cargo build --release -p sygnal-bench-noop-pushkin -p sygnal-bench-boundary) ||
    { echo "FAIL: release build of the boundary benchmark failed"; exit 2; }
fi

busy_1s() {  # whole-machine busy core-% over one second
  local a b c d
  read -r a b < <(awk '/^cpu /{ print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat)
  sleep 1
  read -r c d < <(awk '/^cpu /{ print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat)
  echo $(( $(nproc) * 100 * (c - a) / (d - b) ))
}
waited=0
while :; do
  busy=$(busy_1s)
  [ "$busy" -le "$IDLE_MAX_BUSY" ] && break
  waited=$((waited + 1))
  if [ "$waited" -ge "$IDLE_WAIT_S" ]; then
    echo "machine still busy (${busy}% of $(( $(nproc) * 100 ))%): going ahead, figures are disturbed" >&2
    break
  fi
done
echo "machine busy before the run: ${busy}% (core-%, $(nproc) cores)"
exec "$REPO_DIR/target/release/plugin-boundary" "$@"
