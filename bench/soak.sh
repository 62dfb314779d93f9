#!/usr/bin/env bash
# The soak: bench/soak.sh
#
# One million notifications (TOTAL) through one gateway process to the fake upstreams, drawn
# from a mix (bench/lua/soak.lua): FCM legacy, FCM v1, APNs (HTTP/2 + TLS) and UnifiedPush apps;
# full, event_id_only and badge-only notifications; 1-5 devices; about 5% rejected pushkeys;
# about 5% of upstream requests answered 503 and retried by the gateway (retry_delay_base 0.02 s
# so a retry does not idle a connection for the default 10 s). wrk runs in CHUNK_S chunks until
# TOTAL notifications completed or MAX_S passed; every SAMPLE_S a sampler records the gateway's
# resident memory (/proc/<pid>/status), open file descriptors (/proc/<pid>/fd), threads and the
# notifications it received (its /metrics).
#
# Writes $WORK/soak/: samples.tsv, chunks.tsv, soak.png (gnuplot), summary.md (the verdict:
# resident memory and descriptors flat after warm-up, or not). Exit 0 when flat, 1 when not or
# on a setup failure (the last line says why).
#
# Environment: TOTAL=1000000 CONNS=64 CHUNK_S=30 MAX_S=1500 SAMPLE_S=2 WARMUP_FRACTION=0.1
#              SKIP_BUILD=1 (use the existing release build)  WORK=/tmp/sygnal-bench
#              RSS_GROWTH_MB=5 FD_GROWTH=16 (the flatness bounds after warm-up)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

TOTAL="${TOTAL:-1000000}"
CONNS="${CONNS:-64}"
CHUNK_S="${CHUNK_S:-30}"
MAX_S="${MAX_S:-1500}"
SAMPLE_S="${SAMPLE_S:-2}"
WARMUP_FRACTION="${WARMUP_FRACTION:-0.1}"
RSS_GROWTH_MB="${RSS_GROWTH_MB:-5}"
FD_GROWTH="${FD_GROWTH:-16}"
require_positive_integers TOTAL CONNS CHUNK_S MAX_S SAMPLE_S FD_GROWTH

bench_init
ensure_packages gnuplot:gnuplot-nox
build_release
make_secrets
OUTDIR="$WORK/soak"
rm -rf "$OUTDIR" "$WORK/gateway.log"; mkdir -p "$OUTDIR"
start_upstreams

SOAK_APPS="  com.example.gcm.v1:
    type: gcm
    api_version: v1
    project_id: bench
    service_account_file: \"$WORK/tls/service_account.json\"
    endpoint: \"http://127.0.0.1:$UP_PORT/soak\"
    retry_delay_base: 0.02"
SOAK_TOP="metrics:
  prometheus:
    enabled: true
    address: 127.0.0.1
    port: $METRICS_PORT"
CFG="$WORK/sygnal-soak.yaml"
write_gateway_config "$CFG" fcm-legacy "$SOAK_APPS" "$SOAK_TOP"
# The soak's variants of the three standard apps: flaky upstream bases, fast retries.
sed -i -e "s#endpoint: \"http://127.0.0.1:$UP_PORT\"#endpoint: \"http://127.0.0.1:$UP_PORT/soak\"\n    retry_delay_base: 0.02#" \
       -e "s#endpoint: \"https://127.0.0.1:$APNS_PORT\"#endpoint: \"https://127.0.0.1:$APNS_PORT/soak\"\n    retry_delay_base: 0.02#" \
       -e "s#allowed_endpoints: \['127.0.0.1'\]#allowed_endpoints: ['127.0.0.1']\n    retry_delay_base: 0.02#" "$CFG"
start_gateway "$CFG"
say "gateway pid $GW_PID ready in $READY_MS ms, idle RSS $IDLE_RSS_MB MB"

received() {  # notifications the gateway has received so far (its /metrics)
  curl -s -m 2 "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk '$1 == "sygnal_notifications_received_total" { printf "%d", $2 }'
}
[ -n "$(received)" ] || die "the gateway's /metrics has no sygnal_notifications_received_total"

sampler() {  # runs in the background until killed; a failed reading is a zero, never an exit
  set +e
  trap - ERR
  local t0=$1
  while :; do
    local now rss hwm thr fds rec
    now=$(date +%s.%N)
    read -r rss hwm thr < <(awk '$1 == "VmRSS:" { r = $2 } $1 == "VmHWM:" { h = $2 } $1 == "Threads:" { t = $2 }
                                END { print r + 0, h + 0, t + 0 }' "/proc/$GW_PID/status" 2>/dev/null || echo "0 0 0")
    fds=$(find "/proc/$GW_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    rec=$(received || true)
    printf '%.1f\t%s\t%.1f\t%.1f\t%s\t%s\n' "$(awk -v a="$now" -v b="$t0" 'BEGIN { print a - b }')" \
      "${rec:-0}" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" "$(awk -v k="$hwm" 'BEGIN { print k / 1024 }')" "$fds" "$thr"
    sleep "$SAMPLE_S"
  done
}
printf 't_s\tnotifications\trss_mb\thwm_mb\tfds\tthreads\n' > "$OUTDIR/samples.tsv"
T0=$(date +%s.%N)
sampler "$T0" >> "$OUTDIR/samples.tsv" 2>/dev/null &
SAMPLER_PID=$!
CHILD_PIDS="$SAMPLER_PID"
record_pids "$SAMPLER_PID"

# wrk script: the mix + a done() printing one machine-readable line
SCRIPT="$OUTDIR/soak-wrk.lua"
cat "$BENCH_DIR/lua/soak.lua" > "$SCRIPT"
cat >> "$SCRIPT" <<'LUA'

local soak_threads = {}
setup = function(thread) soak_threads[#soak_threads + 1] = thread end
done = function(summary, latency, requests)
  local e = summary.errors
  local rejected = 0
  for _, t in ipairs(soak_threads) do rejected = rejected + (t:get("rejected_answers") or 0) end
  io.write(string.format("RESULT requests=%d non2xx=%d connect=%d read=%d write=%d timeout=%d p99_us=%d rejected=%d\n",
    summary.requests, e.status, e.connect, e.read, e.write, e.timeout, latency:percentile(99), rejected))
end
LUA

printf 'chunk\tend_s\trequests\tnon2xx\tsock_err\tp99_ms\trps\trejecting_answers\n' > "$OUTDIR/chunks.tsv"
done_total=0; rejected_total=0; failed_total=0; chunk=0; start=$SECONDS
while [ "$done_total" -lt "$TOTAL" ] && [ $((SECONDS - start)) -lt "$MAX_S" ]; do
  chunk=$((chunk + 1))
  kill -0 "$GW_PID" 2>/dev/null || die "the gateway died during the soak (log: $(tail -n 2 "$WORK/gateway.log" | tr '\n' ' '))"
  # wrk restarts with the same seed each chunk: vary it, so chunks are not replays of each other
  sed "s/^math.randomseed(.*)/math.randomseed(20251130 + $chunk)/" "$SCRIPT" > "$OUTDIR/chunk.lua"
  wrk -t1 -c"$CONNS" -d"${CHUNK_S}s" --timeout 10s -s "$OUTDIR/chunk.lua" \
    "http://127.0.0.1:$GW_PORT$NOTIFY_PATH" > "$OUTDIR/wrk-$chunk.txt" 2>&1 </dev/null 9>&- &
  CHILD_PIDS="$SAMPLER_PID $!"
  wait $! || true
  CHILD_PIDS="$SAMPLER_PID"
  truncate_access_log
  R=$(grep '^RESULT' "$OUTDIR/wrk-$chunk.txt" || true)
  [ -n "$R" ] || die "wrk produced no result in chunk $chunk (see $OUTDIR/wrk-$chunk.txt)"
  get() { echo "$R" | grep -o "$1=[0-9]*" | cut -d= -f2; }
  req=$(get requests); n2=$(get non2xx)
  sock=$(( $(get connect) + $(get read) + $(get write) + $(get timeout) ))
  done_total=$((done_total + req))
  rej=$(get rejected); rejected_total=$((rejected_total + rej))
  failed_total=$((failed_total + n2 + sock))
  printf '%d\t%d\t%d\t%d\t%d\t%.1f\t%.0f\t%d\n' "$chunk" $((SECONDS - start)) "$req" "$n2" "$sock" \
    "$(awk -v p="$(get p99_us)" 'BEGIN { print p / 1000 }')" "$(awk -v r="$req" -v d="$CHUNK_S" 'BEGIN { print r / d }')" \
    "$rej" >> "$OUTDIR/chunks.tsv"
  say "chunk $chunk: $req notifications ($n2 non-2xx, $sock socket errors); $done_total of $TOTAL"
done
sleep "$SAMPLE_S"; sleep 1
stop_tree "$SAMPLER_PID"; CHILD_PIDS=""
codes=$(curl -s -m 2 "http://127.0.0.1:$METRICS_PORT/metrics" |
  awk -F'[{}" ]+' '/^sygnal_pushgateway_status_codes_total\{/ { printf "%s%s: %d", sep, $3, $NF; sep = ", " }')
final_rss=$(gw_mem_mb VmRSS); final_hwm=$(gw_mem_mb VmHWM)
elapsed=$((SECONDS - start))
stop_gateway

# --- verdict: compare the first samples after warm-up with the last ones ------------------------
read -r verdict rss_w rss_e fd_w fd_e fd_max thr_w thr_e < <(awk -F'\t' -v total="$done_total" \
  -v wf="$WARMUP_FRACTION" -v rg="$RSS_GROWTH_MB" -v fg="$FD_GROWTH" '
  NR > 1 && $2 > 0 { n++; notif[n] = $2; rss[n] = $3; fd[n] = $5; thr[n] = $6 }
  END {
    w = 0; for (i = 1; i <= n; i++) if (notif[i] >= total * wf) { w = i; break }
    if (w == 0 || n - w < 4) { print "too-short", 0, 0, 0, 0, 0, 0, 0; exit }
    k = int((n - w) / 10); if (k < 1) k = 1
    for (i = w; i < w + k; i++) { rw += rss[i]; fw += fd[i]; tw += thr[i] }
    for (i = n - k + 1; i <= n; i++) { re += rss[i]; fe += fd[i]; te += thr[i] }
    rw /= k; re /= k; fw /= k; fe /= k; tw /= k; te /= k
    fmax = 0; for (i = w; i <= n; i++) if (fd[i] > fmax) fmax = fd[i]
    flat = (re - rw <= rg && fe - fw <= fg) ? "flat" : "growing"
    printf "%s %.1f %.1f %.0f %.0f %d %.0f %.0f\n", flat, rw, re, fw, fe, fmax, tw, te }' "$OUTDIR/samples.tsv")

if command -v gnuplot >/dev/null 2>&1; then
  gnuplot <<GP 2>"$OUTDIR/gnuplot.log" || say "gnuplot failed (see $OUTDIR/gnuplot.log)"
set terminal pngcairo size 900,420 font "sans,10"
set output "$OUTDIR/soak.png"
set datafile separator "\t"
set key bottom right
set title "Soak: $done_total notifications through one gateway process ($CONNS connections)"
set xlabel "notifications received (millions)"
set ylabel "resident memory (MB)"
set y2label "open file descriptors / threads"
set yrange [0:*]
set y2range [0:*]
set ytics nomirror
set y2tics
set grid
plot "$OUTDIR/samples.tsv" every ::1 using (\$2/1e6):3 with lines lw 2 title "VmRSS (MB)", \
     "" every ::1 using (\$2/1e6):5 axes x1y2 with lines lw 2 title "open fds", \
     "" every ::1 using (\$2/1e6):6 axes x1y2 with lines dt 2 title "threads"
GP
fi

{
  echo "## bench/soak.sh $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, commit $(cd "$REPO_DIR" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "$done_total notifications in ${elapsed} s ($chunk chunks of ${CHUNK_S} s, $CONNS connections); gateway answers: ${codes:-?}"
  echo "$rejected_total answers rejected a pushkey; $failed_total non-2xx answers or socket errors (per chunk: chunks.tsv)."
  echo "Gateway ready in $READY_MS ms, idle RSS $IDLE_RSS_MB MB."
  echo
  echo "| after warm-up (${WARMUP_FRACTION} of the notifications) | first samples | last samples |"
  echo "|---|---|---|"
  echo "| resident memory (MB) | $rss_w | $rss_e |"
  echo "| open file descriptors | $fd_w | $fd_e (max $fd_max) |"
  echo "| threads | $thr_w | $thr_e |"
  echo
  echo "Peak RSS (VmHWM) $final_hwm MB, final RSS $final_rss MB."
  echo "Verdict: **$verdict** (bounds after warm-up: RSS +${RSS_GROWTH_MB} MB, fds +${FD_GROWTH})."
} > "$OUTDIR/summary.md"
cat "$OUTDIR/summary.md"
[ "$done_total" -ge "$TOTAL" ] || { echo "FAIL: only $done_total of $TOTAL notifications within MAX_S=${MAX_S}s"; exit 1; }
[ "$verdict" = flat ] || { echo "FAIL: resident memory or descriptors grew after warm-up ($verdict)"; exit 1; }
