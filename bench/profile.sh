#!/usr/bin/env bash
# A CPU profile of the gateway under the FCM legacy load: bench/profile.sh
#
# Starts the fake upstreams and the gateway as bench/run.sh's fcm-legacy scenario does, drives it
# with wrk (CONNS connections, notify1.lua) and, after WARMUP seconds, records DURATION seconds of
# the gateway with `perf record` (call graphs from DWARF unwinding: release builds keep no frame
# pointers). Falls back to valgrind --tool=callgrind on a bounded, lighter run when perf cannot
# record here. Writes $WORK/profile/: perf.data, by-thread.txt (host vs plugin runtime), by-dso.txt,
# symbols.txt (self time), callers.txt (call graphs of the top symbols), categories.txt (shares of
# allocator, JSON, HTTP, TLS, kernel...), or callgrind.out + callgrind.txt.
#
# Environment: CONNS=64 WARMUP=3 DURATION=10 FREQ=250 SKIP_BUILD=1 WORK=/tmp/sygnal-bench
# SCENARIO=fcm-legacy (or fcm-v1) CALL_GRAPH=dwarf,8192 (perf --call-graph; `fp` for a build with -C force-frame-pointers=yes,
# given as GATEWAY_BIN: DWARF unwinding loses frames below large async stack frames)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

CONNS="${CONNS:-64}"
WARMUP="${WARMUP:-3}"
DURATION="${DURATION:-10}"
FREQ="${FREQ:-250}"
require_positive_integers CONNS WARMUP DURATION FREQ

bench_init
ensure_packages perf:linux-perf
build_release
make_secrets
OUTDIR="$WORK/profile"
rm -rf "$OUTDIR" "$WORK/gateway.log"; mkdir -p "$OUTDIR"
start_upstreams
case "${SCENARIO:=fcm-legacy}" in fcm-legacy | fcm-v1) ;; *) die "SCENARIO must be fcm-legacy or fcm-v1 (got '$SCENARIO')" ;; esac
write_gateway_config "$WORK/sygnal-profile.yaml" "$SCENARIO"
LUA="$BENCH_DIR/lua/notify1.lua"

perf_works() {
  perf record -o "$OUTDIR/probe.data" -F 99 -g -- true >/dev/null 2>&1 && rm -f "$OUTDIR/probe.data"
}

summarise_perf() {
  local common=(--no-children --stdio -i "$OUTDIR/perf.data")
  perf report "${common[@]}" --sort comm -g none > "$OUTDIR/by-thread.txt" 2>/dev/null || true
  perf report "${common[@]}" --sort dso -g none > "$OUTDIR/by-dso.txt" 2>/dev/null || true
  perf report "${common[@]}" --sort comm,dso,symbol -g none --percent-limit 0.3 > "$OUTDIR/symbols.txt" 2>/dev/null || true
  perf report "${common[@]}" --sort symbol -g caller,0.5,callee --percent-limit 2 > "$OUTDIR/callers.txt" 2>/dev/null || true
  # Shares by what the time goes to (self time, by symbol name patterns).
  perf report "${common[@]}" --sort symbol -g none --percent-limit 0 2>/dev/null |
    awk '/^ +[0-9.]+%/ { p = $1; sub(/%/, "", p); kernel = ($2 == "[k]"); sym = $0
      sub(/^ +[0-9.]+% +\[[^]]*\] +/, "", sym); sub(/[ -]*$/, "", sym)
      cat = "other"
      if (kernel) cat = "kernel (syscalls, TCP, scheduling, wake-ups)"
      else if (sym ~ /malloc|free|realloc|_int_|tcache|unlink_chunk|arena|calloc|memalign|sdallocx/) cat = "allocator (glibc malloc/free)"
      else if (sym ~ /serde_json|serde::|serde_core|BTreeMap|btree/) cat = "JSON (serde_json, Value maps)"
      else if (sym ~ /hyper|h2::|http::|httparse|reqwest|axum|tower|bytes::|http_body/) cat = "HTTP (hyper, reqwest, axum, bytes)"
      else if (sym ~ /rustls|ring_core|(^|[^A-Za-z_])ring::|aes_|sha256|sha512|gcm_|chacha/) cat = "TLS (rustls, ring)"
      else if (sym ~ /tokio|mio::|parking_lot|futex|Condvar|RawMutex|epoll/) cat = "async runtime (tokio, mio, parking)"
      else if (sym ~ /idna|url::|Url/) cat = "URL parsing (url, idna)"
      else if (sym ~ /tracing|callsite|Dispatch/) cat = "tracing"
      else if (sym ~ /metrics|Registry|Labels/) cat = "metrics (host registry, plugin sink)"
      else if (sym ~ /core::fmt|fmt::|Formatter|Display|LowerHex/) cat = "formatting (core::fmt)"
      else if (sym ~ /abi_stable|async_ffi|RString|RVec|FfiFuture/) cat = "ABI (abi_stable, async-ffi)"
      else if (sym ~ /memcpy|memmove|memset|memcmp|strlen/) cat = "memcpy/memmove/memcmp"
      else if (sym ~ /clock_gettime|writev|__libc_recv|__libc_send|syscall|pthread_.*cancel|__GI___|read$|write$/) cat = "libc syscall wrappers, clock"
      else if (sym ~ /^0x/) cat = "unresolved"
      share[cat] += p }
      END { for (c in share) printf "%6.1f%%  %s\n", share[c], c }' | sort -rn > "$OUTDIR/categories.txt" || true
}

start_gateway "$WORK/sygnal-profile.yaml"
got=$(notify "$(lua_body "$LUA")")
[ "$got" = 'HTTP200 {"rejected":[]}' ] || die "sanity notification answered '$got'"

wrk_script="$OUTDIR/wrk.lua"
cp "$LUA" "$wrk_script"
if perf_works; then
  say "load: wrk -c$CONNS for $((WARMUP + DURATION + 2)) s; perf record -F $FREQ --call-graph dwarf after ${WARMUP} s"
  wrk -t1 -c"$CONNS" -d"$((WARMUP + DURATION + 2))s" -s "$wrk_script" \
    "http://127.0.0.1:$GW_PORT$NOTIFY_PATH" > "$OUTDIR/wrk.txt" 2>&1 </dev/null 9>&- &
  CHILD_PIDS=$!
  sleep "$WARMUP"
  perf record -o "$OUTDIR/perf.data" -F "$FREQ" --call-graph ${CALL_GRAPH:-dwarf,8192} -p "$GW_PID" \
    -- sleep "$DURATION" > "$OUTDIR/perf-record.log" 2>&1 </dev/null 9>&- ||
    die "perf record failed: $(tail -n 2 "$OUTDIR/perf-record.log" | tr '\n' ' ')"
  wait "$CHILD_PIDS" || true; CHILD_PIDS=""
  stop_gateway
  say "summarising (perf report)"
  summarise_perf
  echo "== wrk"; grep -E 'Requests/sec|Latency|Non-2xx' "$OUTDIR/wrk.txt" || true
  echo "== CPU by thread (host runtime threads are named sygnal, the plugin's pushkin-gcm)"
  grep -E '^ +[0-9]' "$OUTDIR/by-thread.txt" | head -n 8 || true
  echo "== by library"; grep -E '^ +[0-9]' "$OUTDIR/by-dso.txt" | head -n 10 || true
  echo "== by category (self time)"; cat "$OUTDIR/categories.txt"
  echo "== top symbols (self time)"; grep -E "^ +[0-9]" "$OUTDIR/symbols.txt" | sed "s/[ -]*$//" | head -n 30 || true
  echo "(full reports in $OUTDIR)"
else
  ensure_packages valgrind:valgrind
  say "perf cannot record here: valgrind --tool=callgrind on a bounded run (wrk -c4, ${DURATION} s)"
  stop_gateway
  (cd "$WORK" && SSL_CERT_FILE="$WORK/tls/ca.crt" exec valgrind --tool=callgrind \
      --callgrind-out-file="$OUTDIR/callgrind.out" "$GATEWAY_BIN" --config "$WORK/sygnal-profile.yaml") \
    </dev/null >>"$WORK/gateway.log" 2>&1 9>&- &
  GW_PID=$!
  record_pids "$GW_PID"
  for _ in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$GW_PORT/health" || true)" = 200 ] && break
    sleep 0.1
  done
  wrk -t1 -c4 -d"${DURATION}s" -s "$wrk_script" "http://127.0.0.1:$GW_PORT$NOTIFY_PATH" > "$OUTDIR/wrk.txt" 2>&1 || true
  stop_gateway
  callgrind_annotate --inclusive=no "$OUTDIR/callgrind.out" > "$OUTDIR/callgrind.txt" 2>/dev/null || true
  head -n 60 "$OUTDIR/callgrind.txt"
fi
