#!/usr/bin/env bash
# User-space instructions per notification, counted by valgrind: bench/instructions.sh [BIN...]
#
# The VM's speed moves rates and CPU times of runs minutes apart by more than most single
# optimisations gain (BENCHMARKS.md); the instructions a notification executes do not. This
# starts the fcm-legacy (or SCENARIO=fcm-v1) gateway of each build given (default: this
# checkout's release build) under `valgrind --tool=callgrind`, instrumentation off, drives it
# with wrk at CONNS connections for WARMUP seconds, turns instrumentation on for DURATION
# seconds of load, and prints the instructions executed (callgrind's Ir: every thread, the host
# and the plugins, user space only; the kernel's share is not counted) divided by the
# notifications answered. Builds are run in turn, ROUNDS times. Runs of one build agree within
# about a percent; valgrind runs one thread at a time, so waiting and waking cost differs from
# a real run, and the kernel's third of the CPU is not seen at all.
# `callgrind_annotate $WORK/instructions/<n>.out` names the functions of run n.
#
# Environment: CONNS=8 WARMUP=3 DURATION=10 ROUNDS=1 SCENARIO=fcm-legacy SKIP_BUILD=1
# WORK=/tmp/sygnal-bench
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

CONNS="${CONNS:-8}"
WARMUP="${WARMUP:-3}"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-1}"
require_positive_integers CONNS WARMUP DURATION ROUNDS
case "${SCENARIO:=fcm-legacy}" in fcm-legacy | fcm-v1) ;; *) die "SCENARIO must be fcm-legacy or fcm-v1 (got '$SCENARIO')" ;; esac
# Plugins load slowly under valgrind.
HEALTH_WAIT_S="${HEALTH_WAIT_S:-180}"

bench_init
ensure_packages valgrind
if [ $# -eq 0 ]; then build_release; set -- "$GATEWAY_BIN"; fi
bins=()
for bin in "$@"; do
  [ -x "$bin" ] || die "not an executable: $bin"
  bins+=("$(realpath "$bin")")   # the gateway starts in $WORK
done
make_secrets
OUTDIR="$WORK/instructions"
rm -rf "$OUTDIR"; mkdir -p "$OUTDIR"
start_upstreams
write_gateway_config "$WORK/sygnal-instructions.yaml" "$SCENARIO"
LUA="$BENCH_DIR/lua/notify1.lua"
URL="http://127.0.0.1:$GW_PORT$NOTIFY_PATH"

printf '%-3s %-8s %12s %16s  %s\n' run answered "Ir (M)" "Ir/notification" binary
run=0
for _ in $(seq "$ROUNDS"); do
  for bin in "${bins[@]}"; do
    run=$((run + 1))
    out="$OUTDIR/$run.out"
    GATEWAY_BIN=$bin GATEWAY_WRAPPER="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$out" \
      start_gateway "$WORK/sygnal-instructions.yaml"
    wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$LUA" "$URL" >/dev/null 2>&1
    callgrind_control -i on "$GW_PID" >/dev/null 2>&1
    wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 10s -s "$LUA" "$URL" > "$OUTDIR/$run.wrk.txt" 2>&1
    callgrind_control -i off "$GW_PID" >/dev/null 2>&1
    stop_gateway   # callgrind writes $out as the gateway exits
    grep -qE 'Non-2xx|Socket errors' "$OUTDIR/$run.wrk.txt" &&
      die "failed requests: $(tr '\n' ' ' < "$OUTDIR/$run.wrk.txt")"
    answered=$(awk '/requests in/ { print $1 }' "$OUTDIR/$run.wrk.txt")
    [ "${answered:-0}" -gt 0 ] || die "no request answered (see $OUTDIR/$run.wrk.txt)"
    ir=$(awk '$1 == "totals:" { print $2; exit }' "$out")
    [ -n "$ir" ] || die "no instruction total in $out"
    awk -v run="$run" -v n="$answered" -v ir="$ir" -v bin="$bin" \
      'BEGIN { printf "%-3s %-8d %12.1f %16.0f  %s\n", run, n, ir / 1e6, ir / n, bin }'
  done
done
