#!/usr/bin/env bash
# The gateway benchmark: bench/run.sh [scenario...]   (default: every scenario)
#
# Builds the release binaries, starts fake upstreams on loopback (bench/fake-upstreams.conf:
# FCM legacy + v1 + OAuth token, APNs over HTTP/2 + TLS, UnifiedPush), then per scenario starts
# the gateway with apps at their default settings, and for each connection count measures the
# gateway (wrk -> gateway -> fake upstream) and the ceiling (the load generator straight at the
# fake upstream) in the same run, with the method of ../shared/perf/run_bench.sh (bench/run_bench.sh):
# idle-machine wait before each attempt, warm-up discarded, attempts disturbed by other processes
# retried. Prints a summary table (also $WORK/results/summary.md) and exits 0 when every
# measurement ran, 1 on a setup failure (the last line says why).
#
# Scenarios (1 device per notification unless said otherwise; Synapse-shaped bodies):
#   fcm-legacy   FCM legacy API                         ceiling: wrk -> /fcm/send
#   fcm-v1       FCM HTTP v1 (OAuth token from the fake) ceiling: wrk -> /v1/projects/bench/messages:send
#   apns         APNs, HTTP/2 + TLS, token auth          ceiling: h2load -> /3/device/<token>
#   unifiedpush  UnifiedPush endpoint                    ceiling: wrk -> the endpoint
#   multi5       5 devices over 3 apps (2 FCM legacy batched, 2 APNs, 1 UnifiedPush: 4 upstream
#                requests per notification)              ceiling: the FCM legacy one
#   reject20     FCM legacy, 1 pushkey in 5 unregistered ceiling: wrk -> the same fake
#   slow50       FCM legacy answering in 50 ms, SLOW_CONNS (1,000) clients: throughput is bounded
#                by concurrency               ceiling: wrk with as many connections -> the slow fake
#
# Environment (all optional):
#   CONNS="1 64 256"  DURATION=10  WARMUP=2  ROUNDS=1 (medians over rounds)  SLOW_CONNS=1000
#   QUICK=1      a short validation run (DURATION=2, WARMUP=1, no idle wait, no retries): its
#                figures are marked provisional
#   SKIP_BUILD=1 use the existing target/release build
#   IDLE_WAIT_S=120 RETRIES=3 IDLE_MAX_BUSY=15 MAX_FOREIGN=10 WRK_TIMEOUT=2s  (run_bench.sh's)
#   WORK=/tmp/sygnal-bench   GATEWAY_BIN=target/release/sygnal
# Ports (127.0.0.1 only): 18080 fake FCM/UnifiedPush, 18443 fake APNs, 18150 gateway.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

ALL_SCENARIOS="fcm-legacy fcm-v1 apns unifiedpush multi5 reject20 slow50"
CONNS="${CONNS:-1 64 256}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
ROUNDS="${ROUNDS:-1}"
SLOW_CONNS="${SLOW_CONNS:-1000}"
IDLE_WAIT_S="${IDLE_WAIT_S:-120}"
RETRIES="${RETRIES:-3}"
MAX_FOREIGN="${MAX_FOREIGN:-10}"
PROVISIONAL=""
if [ "${QUICK:-0}" = 1 ]; then
  DURATION=2; WARMUP=1; IDLE_WAIT_S=1; RETRIES=1; MAX_FOREIGN=1000
  PROVISIONAL="QUICK=1 validation run: figures are provisional"
fi
SCENARIOS="${*:-$ALL_SCENARIOS}"
for s in $SCENARIOS; do
  [[ " $ALL_SCENARIOS " == *" $s "* ]] || die "unknown scenario '$s' (known: $ALL_SCENARIOS)"
done
require_positive_integers DURATION WARMUP ROUNDS SLOW_CONNS IDLE_WAIT_S RETRIES

bench_init
ensure_packages
build_release
make_secrets
RES="$WORK/results"
rm -rf "$RES" "$WORK/gateway.log"; mkdir -p "$RES/raw"
start_upstreams
say "fake upstreams up (nginx $NGX_PID, worker $NGX_WORKERS)"

LUA="$BENCH_DIR/lua"
APNS_TOKEN_HEX=00ff111111111111111111111111111111111111111111111111111111111111
# Apps used by some scenarios only; configured in every run (all gcm, the same plugin).
SCENARIO_APPS="  com.example.gcm.multi:
    type: gcm
    api_key: \"x\"
    endpoint: \"http://127.0.0.1:$UP_PORT/multi\"
  com.example.gcm.rej:
    type: gcm
    api_key: \"x\"
    endpoint: \"http://127.0.0.1:$UP_PORT/rej\"
  com.example.gcm.slow:
    type: gcm
    api_key: \"x\"
    endpoint: \"http://127.0.0.1:$UP_PORT/slow\""

# scenario -> gcm variant, gateway body, ceiling target and the sanity answer
scenario() {
  GCM=fcm-legacy; CONNS_S="$CONNS"; TIMEOUT_S="${WRK_TIMEOUT:-2s}"
  CEIL_LOADGEN=wrk; CEIL_PORT=$UP_PORT; CEIL_LUA=""; CEIL_NOTE=""
  SANITY_BODY_N=""; SANITY_WANT='HTTP200 {"rejected":[]}'
  case "$1" in
    fcm-legacy)  GW_LUA=$LUA/notify1.lua; CEIL_PATH=/fcm/send ;;
    fcm-v1)      GCM=fcm-v1; GW_LUA=$LUA/notify1.lua; CEIL_PATH=/v1/projects/bench/messages:send ;;
    apns)        GW_LUA=$LUA/apns1.lua; CEIL_LOADGEN=h2load; CEIL_PORT=$APNS_PORT
                 CEIL_PATH=/3/device/$APNS_TOKEN_HEX ;;
    unifiedpush) GW_LUA=$LUA/up1.lua; CEIL_PATH=/up/AbCdEf0123456789; CEIL_LUA=$LUA/upbody.lua ;;
    multi5)      GW_LUA=$LUA/multi5.lua; CEIL_PATH=/fcm/send; CEIL_LUA=$LUA/notify1.lua
                 CEIL_NOTE="ceiling = FCM legacy, 1 upstream request; the gateway makes 4 per notification" ;;
    reject20)    GW_LUA=$LUA/reject20.lua; CEIL_PATH=/rej/fcm/send; SANITY_BODY_N=5
                 SANITY_WANT='HTTP200 {"rejected":["reject-5"]}' ;;
    slow50)      GW_LUA=$LUA/slow1.lua; CEIL_PATH=/slow/fcm/send; CEIL_LUA=$LUA/notify1.lua
                 CONNS_S="$SLOW_CONNS"; TIMEOUT_S=10s ;;
  esac
  [ -n "$CEIL_LUA" ] || CEIL_LUA=$GW_LUA
}

OUT="$RES/results.tsv"
RB_PID=""
measure() {  # label port path gw_pids upstream_pids conns lua loadgen timeout
  LABEL="$1" URL_PATH="$3" GW_PID="$4" UPSTREAM_PID="$5" CONNS="$6" DURATION="$DURATION" \
  WARMUP="$WARMUP" OUT="$OUT" RAW_DIR="$RES/raw" IDLE_WAIT_S="$IDLE_WAIT_S" RETRIES="$RETRIES" \
  MAX_FOREIGN="$MAX_FOREIGN" LOADGEN="$8" WRK_TIMEOUT="$9" \
  H2_DATA="$BENCH_DIR/apns-payload.json" \
  H2_HEADERS=$'content-type: application/json\napns-topic: com.example.app\napns-priority: 10\napns-push-type: alert\nauthorization: bearer eyJhbGciOiJFUzI1NiIsImtpZCI6IkJFTkNIS0VZMDEifQ.eyJpc3MiOiJCRU5DSFRFQU0xIiwiaWF0IjoxNzAwMDAwMDAwfQ.c2lnbmF0dXJlLXBsYWNlaG9sZGVyLXNpZ25hdHVyZS1wbGFjZWhvbGRlci1zaWduYXR1cmUtcGxhY2Vob2xkZXI' \
    "$BENCH_DIR/run_bench.sh" "$2" "$7" </dev/null >>"$RES/bench.log" 2>&1 9>&- &
  RB_PID=$!
  CHILD_PIDS="$RB_PID"
  local rc=0
  wait "$RB_PID" || rc=$?
  RB_PID=""; CHILD_PIDS=""
  truncate_access_log
  return $rc
}
row_of() { awk -F'\t' -v l="$1" -v c="$2" '$1 == l && $2 == c' "$OUT" | tail -n 1; }
raw_sum() {  # label conns -> "completed failed" over every output of that label (warm-ups, discarded)
  cat "$RES/raw/"*"_${1}_c${2}_a"*.txt 2>/dev/null | awk '/^RESULT/ {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    req += v["requests"]; bad += v["non2xx"] + v["connect"] + v["read"] + v["write"] + v["timeout"] }
    END { print req + 0, bad + 0 }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan";
  else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

SUMMARY="$RES/summary.tsv"
printf 'scenario\tconns\tgw_rps\tgw_ok_rps\tceiling_rps\tratio_pct\tp50_ms\tp90_ms\tp99_ms\tmax_ms\tfailed\tgw_cpu\tgw_peak_rss_mb\tready_ms\tidle_rss_mb\tupstream_req_per_notif\tupstream_new_conns\tforeign_cpu\tceiling_p99_ms\n' > "$SUMMARY"
NOTES=""
for s in $SCENARIOS; do
  scenario "$s"
  : > "$WORK/gateway.log"
  write_gateway_config "$WORK/sygnal-$s.yaml" "$GCM" "$SCENARIO_APPS"
  start_gateway "$WORK/sygnal-$s.yaml"
  ready_ms=$READY_MS; idle_rss=$IDLE_RSS_MB
  body=$(lua_body "$GW_LUA" "$SANITY_BODY_N")
  [ -n "$body" ] || die "no body in $GW_LUA"
  got=$(notify "$body")
  [ "$got" = "$SANITY_WANT" ] || die "$s: sanity notification answered '$got', want '$SANITY_WANT' (log: $(tail -n 2 "$WORK/gateway.log" | tr '\n' ' '))"
  say "$s: gateway pid $GW_PID ready in ${ready_ms} ms, idle RSS ${idle_rss} MB; sanity notification ok"
  [ -z "$CEIL_NOTE" ] || NOTES="$NOTES\n- $s: $CEIL_NOTE"
  for C in $CONNS_S; do
    gw_rps=(); gw_ok=(); ce_rps=(); gw_p99=(); row=""; crow=""
    for r in $(seq 1 "$ROUNDS"); do
      kill -0 "$GW_PID" 2>/dev/null || die "$s: the gateway died (log: $(tail -n 2 "$WORK/gateway.log" | tr '\n' ' '))"
      c0=$(ngx_counts)
      say "$s, $C connections, round $r: gateway"
      measure "$s-gw-r$r" $GW_PORT "$NOTIFY_PATH" "$GW_PID" "$NGX_WORKERS" "$C" "$GW_LUA" wrk "$TIMEOUT_S" ||
        say "$s: run_bench.sh reported a problem (see $RES/bench.log)"
      sleep 0.2; c1=$(ngx_counts)
      row=$(row_of "$s-gw-r$r" "$C")
      [ -n "$row" ] || die "$s: no result for the gateway at $C connections (see $RES/raw, $RES/bench.log)"
      upreq=$(( ${c1#* } - ${c0#* } - 1 )); upconn=$(( ${c1% *} - ${c0% *} - 1 ))
      say "$s, $C connections, round $r: ceiling ($CEIL_LOADGEN -> 127.0.0.1:$CEIL_PORT$CEIL_PATH)"
      measure "$s-ceiling-r$r" "$CEIL_PORT" "$CEIL_PATH" "$NGX_WORKERS" "" "$C" "$CEIL_LUA" "$CEIL_LOADGEN" "$TIMEOUT_S" ||
        say "$s: run_bench.sh reported a problem (see $RES/bench.log)"
      crow=$(row_of "$s-ceiling-r$r" "$C")
      [ -n "$crow" ] || die "$s: no result for the ceiling at $C connections (see $RES/raw, $RES/bench.log)"
      gw_rps+=("$(cut -f3 <<<"$row")"); gw_p99+=("$(cut -f6 <<<"$row")"); ce_rps+=("$(cut -f3 <<<"$crow")")
      gw_ok+=("$(awk -F'\t' '{ printf "%.1f", ($18 > 0 ? ($17 - $8) / $18 : 0) }' <<<"$row")")
    done
    failed=0
    for r in $(seq 1 "$ROUNDS"); do
      read -r done_r failed_r < <(raw_sum "$s-gw-r$r" "$C"); failed=$(( failed + failed_r ))
    done
    X=$(median "${gw_rps[@]}"); XOK=$(median "${gw_ok[@]}"); Y=$(median "${ce_rps[@]}"); Z=$(median "${gw_p99[@]}")
    # upstream requests the fake saw per notification the last round completed (warm-up included)
    per=$(awk -v u="$upreq" -v n="$done_r" 'BEGIN { printf "%.2f", (n > 0 ? u / n : 0) }')
    IFS=$'\t' read -r _ _ _ p50 p90 _ mx _ _ gcpu _ _ _ fo hwm _ _ _ _ <<<"$row"
    printf '%s\t%s\t%.0f\t%s\t%.0f\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
      "$s" "$C" "$X" "$(printf '%.0f' "$XOK")" "$Y" "$(awk -v x="$XOK" -v y="$Y" 'BEGIN { printf "%.1f", (y > 0 ? 100 * x / y : 0) }')" \
      "$p50" "$p90" "$Z" "$mx" "$failed" "$gcpu" "$hwm" "$ready_ms" "$idle_rss" "$per" "$upconn" "$fo" \
      "$(cut -f6 <<<"$crow")" >> "$SUMMARY"
    say "$s c=$C: gateway $X/s vs ceiling $Y/s, p99 $Z ms, $failed failed, peak RSS $hwm MB"
  done
  stop_gateway
done

# --- report -------------------------------------------------------------------------------------
{
  echo "## bench/run.sh $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, commit $(cd "$REPO_DIR" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "${DURATION} s measured after ${WARMUP} s warm-up per run, ${ROUNDS} round(s) (medians); gateway apps at default settings."
  if [ -n "$PROVISIONAL" ]; then echo "**$PROVISIONAL.**"; fi
  echo
  echo "| scenario | conns | gateway/s | 2xx/s | ceiling/s | ratio | p50 ms | p90 ms | p99 ms | max ms | failed | gw CPU % | peak RSS MB | ready ms | idle RSS MB | upstream req/notif | new upstream conns | other CPU % |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  tail -n +2 "$SUMMARY" | awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s%% | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18 }'
  echo
  echo "gateway/s = answers per second, 2xx/s = successful ones (the ratio to the ceiling uses 2xx/s);"
  echo "failed = non-2xx responses + socket errors, warm-ups included; CPU in core-% (200 = both cores);"
  echo "other CPU = the machine's busy time not spent in the gateway, the fake upstream or the load generator"
  echo "(above ${MAX_FOREIGN}% the figure is disturbed by other work)."
  if [ -n "$NOTES" ]; then printf "%b\n" "$NOTES"; fi
} > "$RES/summary.md"
cat "$RES/summary.md"
