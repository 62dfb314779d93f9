#!/usr/bin/env bash
# Load-test one HTTP endpoint on 127.0.0.1 and record throughput, latency, errors and the
# server's CPU and peak RSS: the method of ../shared/perf/run_bench.sh (the script the
# performance targets are judged with), kept column for column, with one addition: LOADGEN=h2load
# drives an HTTP/2 + TLS endpoint (the fake APNs) with h2load instead of wrk.
#
# Usage:  run_bench.sh PORT LUA_BODY_FILE
#   PORT           port on 127.0.0.1
#   LUA_BODY_FILE  wrk Lua script setting wrk.method/body/headers (or a request() function)
# Environment (all optional):
#   URL_PATH     request path                (default /_matrix/push/v1/notify)
#   CONNS        connection counts            (default "1 16 64 256")
#   DURATION     measured seconds per run     (default 15)
#   WARMUP       warm-up seconds per run      (default 3; same connection count, discarded)
#   GW_PID       PID(s) of the measured server (default: whatever listens on PORT)
#   UPSTREAM_PID PID(s) whose CPU is accounted separately (e.g. the fake upstream's worker)
#   LABEL        label for the rows           (default port<PORT>)
#   OUT          TSV file rows are appended to; contaminated attempts go to $OUT.discarded
#   RAW_DIR      where full load-generator outputs go
#   WRK_TIMEOUT  wrk --timeout                (default 2s)
#   IDLE_MAX_BUSY  before each attempt, wait (up to IDLE_WAIT_S, default 900 s) until the machine
#                is at most this busy over 1 s (core-%, default 15)
#   MAX_FOREIGN  discard and retry (up to RETRIES, default 6) an attempt during which other
#                processes used more than this many core-% (default 10; 1000 disables)
#   LOADGEN      wrk (default) | h2load
#   H2_SCHEME    h2load only: https (default)
#   H2_MAX_STREAMS h2load only: concurrent streams per connection (default 64): the C concurrent
#                requests go over ceil(C / H2_MAX_STREAMS) connections, as streams (the gateway
#                multiplexes an app's pushes on one HTTP/2 connection; one connection carrying
#                256 streams runs at a fraction of four carrying 64 against nginx)
#   H2_DATA      h2load only: file holding the request body (POST)
#   H2_HEADERS   h2load only: extra headers, one per line
#
# CPU columns are core-% (100 = one core busy): gw_cpu, upstream_cpu, wrk_cpu (the load
# generator), irq_cpu (machine irq+softirq, informational), foreign_cpu (whole-machine busy time
# minus gw/upstream/load generator: anything else running). Memory: VmHWM / VmRSS summed over GW_PID.
set -euo pipefail

PORT=${1:?usage: run_bench.sh PORT LUA_BODY_FILE}
LUA=${2:?usage: run_bench.sh PORT LUA_BODY_FILE}
URL_PATH=${URL_PATH:-/_matrix/push/v1/notify}
CONNS=${CONNS:-"1 16 64 256"}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
LABEL=${LABEL:-port$PORT}
OUT=${OUT:-/tmp/sygnal-bench/results/results.tsv}
RAW_DIR=${RAW_DIR:-/tmp/sygnal-bench/results/raw}
WRK_TIMEOUT=${WRK_TIMEOUT:-2s}
IDLE_MAX_BUSY=${IDLE_MAX_BUSY:-15}
IDLE_WAIT_S=${IDLE_WAIT_S:-900}
MAX_FOREIGN=${MAX_FOREIGN:-10}
RETRIES=${RETRIES:-6}
LOADGEN=${LOADGEN:-wrk}
H2_SCHEME=${H2_SCHEME:-https}
H2_MAX_STREAMS=${H2_MAX_STREAMS:-64}
H2_DATA=${H2_DATA:-}
H2_HEADERS=${H2_HEADERS:-}

[ -r "$LUA" ] || { echo "cannot read $LUA" >&2; exit 2; }
mkdir -p "$RAW_DIR" "$(dirname "$OUT")"

if [ -z "${GW_PID:-}" ]; then
  GW_PID=$(ss -ltnpH "sport = :$PORT" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | tr '\n' ' ' || true)
fi
[ -n "$GW_PID" ] || { echo "nothing listening on 127.0.0.1:$PORT (or set GW_PID)" >&2; exit 2; }

# wrk script = the body file + a done() that prints one machine-readable line
SCRIPT=$(mktemp "$RAW_DIR/wrkscript.XXXXXX.lua")
trap 'rm -f "$SCRIPT"' EXIT
cat "$LUA" > "$SCRIPT"
cat >> "$SCRIPT" <<'LUA'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
LUA

# h2load: the same RESULT line; latencies from its per-request log (start_us, status, duration_us)
h2load_run() {  # conns seconds out_file
  local c=$1 secs=$2 out=$3 line
  local log="$out.log" args=()
  while IFS= read -r line; do [ -n "$line" ] && args+=(-H "$line"); done <<<"$H2_HEADERS"
  [ -n "$H2_DATA" ] && args+=(-d "$H2_DATA")
  local conns=$(( (c + H2_MAX_STREAMS - 1) / H2_MAX_STREAMS ))
  local streams=$(( (c + conns - 1) / conns ))
  h2load -t1 -c"$conns" -m"$streams" -D"$secs" --log-file="$log" "${args[@]}" \
    "$H2_SCHEME://127.0.0.1:${PORT}${URL_PATH}" > "$out" 2>&1 || true
  sort -n -k3,3 "$log" 2>/dev/null | awk -v out="$out" '
    { n++; d[n] = $3; if ($2 !~ /^[23]/) bad++ }
    function pct(q,  i) { i = int(n * q); if (i < 1) i = 1; return d[i] }
    END {
      secs = 0; errored = 0; timeout = 0
      while ((getline l < out) > 0) {
        if (l ~ /^finished in/) { split(l, f, /[ ,]+/); v = f[3]; secs = v + 0
          if (v ~ /ms$/) secs /= 1000; else if (v ~ /us$/) secs /= 1000000 }
        if (l ~ /^requests:/) { split(l, f, /[ ,]+/); errored = f[12]; timeout = f[14] }
      }
      if (n == 0 || secs == 0) exit 1
      printf "RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
        n, secs * 1000000, pct(0.50), pct(0.90), pct(0.99), d[n], bad, 0, errored, 0, timeout
    }' >> "$out" || true
  rm -f "$log"
}
load() {  # conns seconds out_file [--latency]
  if [ "$LOADGEN" = h2load ]; then
    h2load_run "$1" "$2" "$3"
  else
    wrk -t1 -c"$1" -d"${2}s" --timeout "$WRK_TIMEOUT" ${4:-} -s "$SCRIPT" "$URL" > "$3" 2>&1 || true
  fi
}

HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
URL="http://127.0.0.1:${PORT}${URL_PATH}"
ticks_of() {  # summed utime+stime (clock ticks, all threads) of the given pids
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    # after "pid (comm) " the state is $1, utime=$12, stime=$13
    t=$(( t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}') ))
  done
  echo $t
}
# machine counters: procbusy(user+nice+system+steal) irq(irq+softirq) total
sys_ticks() { awk '/^cpu /{pb=$2+$3+$4+$9; irq=$7+$8; print pb, irq, pb+irq+$5+$6}' /proc/stat; }
busy_1s() { local a i b c j d; read -r a i b < <(sys_ticks); sleep 1; read -r c j d < <(sys_ticks)
            echo $(( NCPU * 100 * (c - a + j - i) / (d - b) )); }
mem_kb() {  # $1 = VmHWM or VmRSS, summed over GW_PID
  local t=0 p
  for p in $GW_PID; do t=$(( t + $(awk -v k="$1:" '$1==k{print $2}' "/proc/$p/status" 2>/dev/null || echo 0) )); done
  echo $t
}

HDR='label\tconns\trps\tp50_ms\tp90_ms\tp99_ms\tmax_ms\tnon2xx3xx\tsock_err_c/r/w/t\tgw_cpu\tupstream_cpu\twrk_cpu\tirq_cpu\tforeign_cpu\tgw_VmHWM_MB\tgw_VmRSS_MB\trequests\tduration_s\tattempt\n'
[ -s "$OUT" ] || printf "$HDR" > "$OUT"
[ -s "$OUT.discarded" ] || printf "$HDR" > "$OUT.discarded"

rc=0
for C in $CONNS; do
  for attempt in $(seq 1 "$RETRIES"); do
    waited=0
    while :; do
      pre=$(busy_1s); [ "$pre" -le "$IDLE_MAX_BUSY" ] && break
      waited=$((waited + 1)); [ "$waited" -ge "$IDLE_WAIT_S" ] && { echo "machine still busy (${pre}%), going ahead" >&2; break; }
      [ $((waited % 30)) -eq 1 ] && echo "machine busy ${pre}% before run, waiting" >&2
    done
    TAG="$(date +%Y%m%dT%H%M%S)_${LABEL//[^A-Za-z0-9=.-]/_}_c${C}_a${attempt}"
    load "$C" "$WARMUP" "$RAW_DIR/${TAG}.warmup.txt"
    g0=$(ticks_of $GW_PID); u0=$(ticks_of ${UPSTREAM_PID:-}); read -r pb0 ir0 t0 < <(sys_ticks); w0=$(date +%s.%N)
    TIMEFORMAT='%U %S'
    { time load "$C" "$DURATION" "$RAW_DIR/${TAG}.txt" --latency ; } 2> "$RAW_DIR/${TAG}.wrktime"
    g1=$(ticks_of $GW_PID); u1=$(ticks_of ${UPSTREAM_PID:-}); read -r pb1 ir1 t1 < <(sys_ticks); w1=$(date +%s.%N)
    wrkcpu=$(awk '{print $1 + $2}' "$RAW_DIR/${TAG}.wrktime")
    hwm=$(mem_kb VmHWM); rss=$(mem_kb VmRSS)
    R=$(grep '^RESULT' "$RAW_DIR/${TAG}.txt" || true)
    if [ -z "$R" ]; then echo "no result, see $RAW_DIR/${TAG}.txt" >&2; rc=1; continue; fi
    get() { echo "$R" | grep -o "$1=[0-9]*" | cut -d= -f2; }
    row=$(awk -v label="$LABEL" -v c="$C" -v req="$(get requests)" -v dur="$(get duration_us)" \
        -v p50="$(get p50_us)" -v p90="$(get p90_us)" -v p99="$(get p99_us)" -v mx="$(get max_us)" \
        -v n2="$(get non2xx)" -v ec="$(get connect)" -v er="$(get read)" -v ew="$(get write)" -v et="$(get timeout)" \
        -v dg="$((g1 - g0))" -v du="$((u1 - u0))" -v wc="$wrkcpu" -v hz="$HZ" -v ncpu="$NCPU" \
        -v dpb="$((pb1 - pb0))" -v dir="$((ir1 - ir0))" -v dt="$((t1 - t0))" -v w0="$w0" -v w1="$w1" \
        -v hwm="$hwm" -v rss="$rss" -v att="$attempt" 'BEGIN{
          wall = w1 - w0;
          gw = 100*dg/hz/wall; up = 100*du/hz/wall; wk = 100*wc/wall;
          irq = ncpu*100*dir/dt; fo = ncpu*100*(dpb+dir)/dt - gw - up - wk;
          printf "%s\t%d\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t%d/%d/%d/%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%d\t%.2f\t%d\n",
            label, c, req/(dur/1e6), p50/1000, p90/1000, p99/1000, mx/1000, n2, ec, er, ew, et,
            gw, up, wk, irq, fo, hwm/1024, rss/1024, req, dur/1e6, att }')
    fo=$(echo "$row" | cut -f14)
    if awk -v f="$fo" -v m="$MAX_FOREIGN" 'BEGIN{exit !(f > m)}' && [ "$attempt" -lt "$RETRIES" ]; then
      echo "DISCARDED (foreign_cpu=$fo > $MAX_FOREIGN): $row" >&2
      echo "$row" >> "$OUT.discarded"
      continue
    fi
    echo "$row" | tee -a "$OUT"
    break
  done
done
exit $rc
