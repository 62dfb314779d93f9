#!/usr/bin/env bash
# Two gateway builds against each other: bench/ab.sh BIN_A BIN_B [ROUNDS]
#
# For changes too small to see through the judged script's ratio (the ceiling moves with the
# VM's speed by more than they gain): runs the fcm-legacy (or SCENARIO=fcm-v1) gateway of each
# build in turn, ROUNDS times (default 5), alternating A and B so a change in the VM's speed
# hits both alike, and prints each run's rate and the gateway's CPU per notification (its
# user + system time during the run, divided by the notifications answered). Each run: a fresh
# gateway, a 2 s warm-up at CONNS connections, then DURATION seconds measured.
# BIN_A and BIN_B are `sygnal` binaries with their plugin libraries beside them (a build of
# another commit: `git worktree add ../base <rev>` and `CARGO_TARGET_DIR=../base-target cargo
# build --release --workspace` there).
#
# Environment: CONNS=64 DURATION=6 SCENARIO=fcm-legacy WORK=/tmp/sygnal-bench
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

[ $# -ge 2 ] || die "usage: bench/ab.sh BIN_A BIN_B [ROUNDS]"
BIN_A=$1 BIN_B=$2 ROUNDS="${3:-5}"
CONNS="${CONNS:-64}"
DURATION="${DURATION:-6}"
SCENARIO="${SCENARIO:-fcm-legacy}"
require_positive_integers CONNS DURATION ROUNDS
case "$SCENARIO" in fcm-legacy | fcm-v1) ;; *) die "SCENARIO must be fcm-legacy or fcm-v1" ;; esac
for bin in "$BIN_A" "$BIN_B"; do [ -x "$bin" ] || die "not an executable: $bin"; done
# The gateway starts in $WORK: the binaries' paths must not be relative.
BIN_A=$(realpath "$BIN_A") BIN_B=$(realpath "$BIN_B")

bench_init
ensure_packages
make_secrets
start_upstreams
write_gateway_config "$WORK/sygnal-ab.yaml" "$SCENARIO"
LUA="$BENCH_DIR/lua/notify1.lua"
URL="http://127.0.0.1:$GW_PORT$NOTIFY_PATH"
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$GW_PID/stat"; }

printf '%-5s %-2s %10s %10s %14s\n' round of rate cpu% "µs/notif"
for round in $(seq "$ROUNDS"); do
  for which in A B; do
    if [ $which = A ]; then GATEWAY_BIN=$BIN_A; else GATEWAY_BIN=$BIN_B; fi
    start_gateway "$WORK/sygnal-ab.yaml"
    wrk -t1 -c"$CONNS" -d2s -s "$LUA" "$URL" >/dev/null 2>&1
    before=$(cpu_ticks)
    wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$LUA" "$URL" > "$WORK/wrk-ab.txt" 2>&1
    after=$(cpu_ticks)
    stop_gateway
    grep -qE 'Non-2xx|Socket errors' "$WORK/wrk-ab.txt" && die "$which: failed requests: $(tr '\n' ' ' < "$WORK/wrk-ab.txt")"
    rate=$(awk '/Requests\/sec/ { print $2 }' "$WORK/wrk-ab.txt")
    awk -v round="$round" -v which=$which -v rate="$rate" -v ticks=$((after - before)) \
      -v hz="$(getconf CLK_TCK)" -v d="$DURATION" \
      'BEGIN { printf "%-5s %-2s %10.0f %9.0f%% %14.2f\n", round, which, rate, 100 * ticks / hz / d, 1e6 * ticks / hz / (rate * d) }'
  done
done
