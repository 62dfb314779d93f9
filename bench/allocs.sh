#!/usr/bin/env bash
# Heap allocations per notification, in the host and in the gcm plugin: bench/allocs.sh
#
# Starts the fcm-legacy (or SCENARIO=fcm-v1) gateway as bench/profile.sh does, puts uprobes on
# mimalloc's allocation entry points (`mi_malloc_aligned`, `mi_zalloc_aligned`,
# `mi_realloc_aligned`: what Rust's global allocator calls) in the host binary and in the gcm
# library's loaded snapshot, and counts them with `perf stat` over DURATION seconds of wrk load
# after a warm-up. Prints each count divided by the notifications answered. The counts are by
# code, not by thread: the SDK's parse runs in the plugin's code on the host's thread.
# With RECORD=1 it also records 2 s of allocations with call chains to $WORK/allocs/perf.data
# (give a build with -C force-frame-pointers=yes as GATEWAY_BIN: callers are unwound by frame
# pointers); `perf report -i $WORK/allocs/perf.data --no-children` then names the call sites.
# The uprobes make every allocation trap: rates under this script are far below the real ones.
#
# Environment: CONNS=64 WARMUP=2 DURATION=5 SCENARIO=fcm-legacy SKIP_BUILD=1 RECORD=
# GATEWAY_BIN= WORK=/tmp/sygnal-bench
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

CONNS="${CONNS:-64}"
WARMUP="${WARMUP:-2}"
DURATION="${DURATION:-5}"
require_positive_integers CONNS WARMUP DURATION
case "${SCENARIO:=fcm-legacy}" in fcm-legacy | fcm-v1) ;; *) die "SCENARIO must be fcm-legacy or fcm-v1 (got '$SCENARIO')" ;; esac

bench_init
ensure_packages perf:linux-perf
build_release
make_secrets
OUTDIR="$WORK/allocs"
rm -rf "$OUTDIR"; mkdir -p "$OUTDIR"
start_upstreams
write_gateway_config "$WORK/sygnal-allocs.yaml" "$SCENARIO"
LUA="$BENCH_DIR/lua/notify1.lua"
URL="http://127.0.0.1:$GW_PORT$NOTIFY_PATH"

remove_probes() { perf probe -q -d 'sygnal_host:*' -d 'sygnal_gcm:*' >/dev/null 2>&1 || true; }
remove_probes
trap 'remove_probes; bench_cleanup' EXIT

start_gateway "$WORK/sygnal-allocs.yaml"
host_bin=$(readlink -f "/proc/$GW_PID/exe")
# The gcm library as the gateway loaded it: a private copy named by its hash.
gcm_lib=""
for lib in $(awk '$6 ~ /\.so$/ { print $6 }' "/proc/$GW_PID/maps" | sort -u); do
  if [ "$(nm "$lib" 2>/dev/null | grep -c sygnal_pushkin_gcm)" -gt 0 ]; then gcm_lib=$lib; fi
done
[ -n "$gcm_lib" ] || die "the gcm library is not mapped in the gateway"
add_probes() {  # group binary
  local fn
  for fn in mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned; do
    # -f: a library may hold more than one copy of the symbol.
    perf probe -q -f -x "$2" -a "$1:${fn#mi_}=$fn" >/dev/null 2>&1 || die "cannot put a uprobe on $fn in $2"
  done
}
add_probes sygnal_host "$host_bin"
add_probes sygnal_gcm "$gcm_lib"

wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$LUA" "$URL" >/dev/null 2>&1
perf stat -x, -o "$OUTDIR/counts.csv" -e 'sygnal_host:*' -e 'sygnal_gcm:*' -p "$GW_PID" -- \
  wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$LUA" "$URL" > "$OUTDIR/wrk.txt" 2>&1
grep -qE 'Non-2xx|Socket errors' "$OUTDIR/wrk.txt" && die "failed requests: $(tr '\n' ' ' < "$OUTDIR/wrk.txt")"
answered=$(awk '/requests in/ { print $1 }' "$OUTDIR/wrk.txt")
[ "${answered:-0}" -gt 0 ] || die "no request answered (see $OUTDIR/wrk.txt)"
if [ -n "${RECORD:-}" ]; then
  perf record -q -o "$OUTDIR/perf.data" --call-graph fp -e 'sygnal_host:*' -e 'sygnal_gcm:*' \
    -p "$GW_PID" -- wrk -t1 -c"$CONNS" -d2s -s "$LUA" "$URL" >/dev/null 2>&1
fi
stop_gateway

echo "$SCENARIO, $CONNS connections: $answered notifications answered in ${DURATION} s"
printf '%-26s %12s %12s\n' event count per-notif
awk -F, -v n="$answered" '$1 ~ /^[0-9]+$/ { printf "%-26s %12d %12.1f\n", $3, $1, $1 / n }' "$OUTDIR/counts.csv"
[ -z "${RECORD:-}" ] || echo "call chains: perf report -i $OUTDIR/perf.data --no-children"
