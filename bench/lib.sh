# Shared by bench/run.sh, bench/soak.sh and bench/profile.sh (sourced, not run).
#
# Everything here is loopback only and bounded: the fake upstreams (one private nginx from
# fake-upstreams.conf), throwaway TLS and signing keys, the gateway with a generated config, and
# a cleanup that stops every process these scripts started (by PID, with its descendants), on
# exit, failure or signal. A run killed with SIGKILL leaves its PIDs in $WORK/pids: the next run
# stops exactly those first.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
WORK="${WORK:-/tmp/sygnal-bench}"
GATEWAY_BIN="${GATEWAY_BIN:-$REPO_DIR/target/release/sygnal}"
HEALTH_WAIT_S="${HEALTH_WAIT_S:-30}"
GW_PORT=18150
METRICS_PORT=18151
UP_PORT=18080
APNS_PORT=18443
NOTIFY_PATH=/_matrix/push/v1/notify

NGX_PID=""
NGX_WORKERS=""
GW_PID=""
HAVE_LOCK=0
CHILD_PIDS=""

say() { echo "$(basename "$0"): $*" >&2; }
die() { echo "FAIL: $*"; exit 1; }
require_positive_integers() {  # $@ = names of variables that must hold whole numbers > 0
  local v
  for v in "$@"; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
  done
}

# --- processes ------------------------------------------------------------------------------
tree_pids() {  # $@ = root pids -> the live ones and all their descendants, space separated
  # processes come and go while cat reads them: a vanished one is not an error
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$*" '
    { p = $1; s = $0; sub(/^.*\) /, "", s); split(s, a, " "); if (a[1] != "Z") par[p] = a[2] }
    END { n = split(roots, q, " "); for (i = 1; i <= n; i++) if (q[i] in par) inq[q[i]] = 1
          ch = 1; while (ch) { ch = 0; for (p in par) if (!(p in inq) && (par[p] in inq)) { inq[p] = 1; ch = 1 } }
          for (p in inq) printf "%s ", p }'
}
stop_tree() {  # TERM the given pids and their descendants, KILL what is left after 5 s
  local pids p live=""
  [ $# -gt 0 ] || return 0
  pids=$(tree_pids "$@")
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 50); do
    live=""; for p in $pids; do [ -n "$(tree_pids "$p")" ] && live="$live $p"; done
    [ -z "$live" ] && break; sleep 0.1
  done
  # shellcheck disable=SC2086
  [ -n "$live" ] && kill -KILL $live 2>/dev/null
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
  return 0
}
start_time_of() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $20 }'; }
record_pids() {  # remember "pid starttime" of what we started, for reap_leftovers
  local p
  for p in $(tree_pids "$@"); do echo "$p $(start_time_of "$p")"; done >> "$WORK/pids"
}
reap_leftovers() {  # stop what a previous run recorded and left behind (same pid AND start time)
  local p st left=""
  [ -f "$WORK/pids" ] || return 0
  while read -r p st; do
    [ -n "$st" ] && [ "$(start_time_of "$p")" = "$st" ] && left="$left $p"
  done < "$WORK/pids"
  if [ -n "$left" ]; then
    say "stopping processes left behind by an earlier run:$left"
    # shellcheck disable=SC2086
    kill -TERM $left 2>/dev/null || true; sleep 1
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
  rm -f "$WORK/pids"
}
bench_cleanup() {
  trap - EXIT INT TERM HUP
  set +e
  # shellcheck disable=SC2086
  stop_tree $CHILD_PIDS
  stop_gateway
  # shellcheck disable=SC2086
  stop_tree $NGX_PID
  [ "$HAVE_LOCK" = 1 ] || return 0
  rm -f "$WORK/pids"
  if [ -f "$WORK/nginx/logs/access.log" ]; then   # ~150 MB per ceiling run: keep the tail
    tail -n 1000 "$WORK/nginx/logs/access.log" > "$WORK/nginx/logs/access.log.tail" 2>/dev/null
    rm -f "$WORK/nginx/logs/access.log"
  fi
}

# Call first: traps, work dir, lock (one run per WORK), leftovers of a killed run.
bench_init() {
  set +m   # no job control: background children share our process group
  set -E   # the ERR trap also fires inside functions: no failure goes unexplained
  trap 'bench_rc=$?; echo "FAIL: ${0##*/}: line $LINENO: \`$BASH_COMMAND\` exited $bench_rc"' ERR
  trap bench_cleanup EXIT
  trap 'echo "FAIL: interrupted"; exit 1' INT TERM HUP
  mkdir -p "$WORK"
  WORK="$(cd "$WORK" && pwd)"
  exec 9>"$WORK/.lock"
  flock -n 9 || die "another benchmark is running with WORK=$WORK"
  HAVE_LOCK=1
  reap_leftovers
  # 1,000 client connections plus upstream ones need more than the common soft limit of 1,024.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

# --- tools ----------------------------------------------------------------------------------
ensure_packages() {
  local missing=() created_policy=0
  command -v nginx >/dev/null 2>&1 || missing+=(nginx)
  [ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ] || missing+=(libnginx-mod-http-echo)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v flock >/dev/null 2>&1 || missing+=(util-linux)
  local p
  for p in "$@"; do command -v "${p%%:*}" >/dev/null 2>&1 || missing+=("${p#*:}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]} and not root (apt-get install -y ${missing[*]})"
  say "installing ${missing[*]} (log: $WORK/apt.log)"
  # keep the Debian nginx package from starting a system nginx on 0.0.0.0:80 while it installs
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
  fi
  local ok=0
  if DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >>"$WORK/apt.log" 2>&1; then ok=1
  elif apt-get update >>"$WORK/apt.log" 2>&1 &&
       DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >>"$WORK/apt.log" 2>&1; then ok=1
  fi
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$ok" = 1 ] || die "apt-get install ${missing[*]} failed (see $WORK/apt.log)"
}

build_release() {
  if [ "${SKIP_BUILD:-0}" = 1 ]; then
    [ -x "$GATEWAY_BIN" ] || die "SKIP_BUILD=1 but $GATEWAY_BIN is missing"
    return 0
  fi
  say "cargo build --release --workspace (log: $WORK/build.log)"
  (cd "$REPO_DIR" && cargo build --release --workspace) >"$WORK/build.log" 2>&1 ||
    die "release build failed: $(tail -n 3 "$WORK/build.log" | tr '\n' ' ')"
}

# --- secrets: throwaway, made per run --------------------------------------------------------
make_secrets() {
  local t="$WORK/tls"
  rm -rf "$t"; mkdir -p "$t"
  # A CA and a leaf for 127.0.0.1 (the gateway trusts the CA through SSL_CERT_FILE).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=sygnal bench CA" -keyout "$t/ca.key" -out "$t/ca.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign >/dev/null 2>&1 ||
    die "openssl could not make the CA"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$t/upstream.key" -out "$t/upstream.csr" >/dev/null 2>&1 || die "openssl: leaf key"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$t/leaf.ext"
  openssl x509 -req -in "$t/upstream.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial \
    -days 2 -extfile "$t/leaf.ext" -out "$t/upstream.crt" >/dev/null 2>&1 || die "openssl: leaf cert"
  # The APNs provider-token key (ES256, PKCS#8 like Apple's .p8).
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$t/apns_key.p8" 2>/dev/null ||
    die "openssl: APNs key"
  # The WebPush VAPID key (P-256).
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$t/vapid_key.pem" 2>/dev/null ||
    die "openssl: VAPID key"
  # The FCM v1 service account (RSA-2048), token_uri = the fake token endpoint.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$t/sa_key.pem" 2>/dev/null ||
    die "openssl: service-account key"
  local key_json
  key_json=$(awk '{ printf "%s\\n", $0 }' "$t/sa_key.pem")
  cat > "$t/service_account.json" <<JSON
{
  "type": "service_account",
  "project_id": "bench",
  "private_key_id": "bench-key-1",
  "private_key": "$key_json",
  "client_email": "bench@bench.iam.gserviceaccount.com",
  "client_id": "100000000000000000001",
  "auth_uri": "http://127.0.0.1:$UP_PORT/auth",
  "token_uri": "http://127.0.0.1:$UP_PORT/token",
  "universe_domain": "googleapis.com"
}
JSON
}

# --- the fake upstreams -----------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ngx_counts() {  # "accepts requests" of the fake upstreams (stub_status)
  curl -s -m 2 "http://127.0.0.1:$UP_PORT/nginx_status" | awk 'NR == 3 { print $1, $3 }'
}
truncate_access_log() { : > "$WORK/nginx/logs/access.log"; }

start_upstreams() {
  local p
  for p in $UP_PORT $APNS_PORT $GW_PORT $METRICS_PORT; do
    port_open "$p" && die "something already listens on 127.0.0.1:$p (another benchmark or test run?)"
  done
  rm -rf "$WORK/nginx"; mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
  sed "s#@WORK@#$WORK#g" "$BENCH_DIR/fake-upstreams.conf" > "$WORK/nginx/nginx.conf"
  nginx -t -q -e "$WORK/nginx/logs/error.log" -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" \
    >"$WORK/nginx/logs/nginx-t.log" 2>&1 || die "nginx -t: $(grep -m1 emerg "$WORK/nginx/logs/nginx-t.log")"
  nginx -e "$WORK/nginx/logs/error.log" -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" \
    </dev/null >>"$WORK/nginx/logs/stdout.log" 2>&1 9>&- &
  NGX_PID=$!
  for _ in $(seq 1 100); do
    port_open $UP_PORT && port_open $APNS_PORT && break
    kill -0 "$NGX_PID" 2>/dev/null || break; sleep 0.05
  done
  port_open $UP_PORT && port_open $APNS_PORT ||
    die "fake upstreams did not listen: $(tail -1 "$WORK/nginx/logs/error.log" 2>/dev/null)"
  for _ in $(seq 1 50); do
    NGX_WORKERS=$(tree_pids "$NGX_PID" | awk -v master="$NGX_PID" '{ for (i = 1; i <= NF; i++) if ($i != master) { printf "%s%s", sep, $i; sep = " " } }')
    [ -n "$NGX_WORKERS" ] && break; sleep 0.05
  done
  [ -n "$NGX_WORKERS" ] || die "no nginx worker under master $NGX_PID"
  record_pids "$NGX_PID"
  check_upstreams
}

expect() {  # what got want
  [[ "$2" == *"$3"* ]] || die "$1 answered '$2', want '$3'"
}
check_upstreams() {
  local u="http://127.0.0.1:$UP_PORT" r
  r=$(curl -s -m 5 -d '{"to":"x"}' "$u/fcm/send");            expect "fake FCM /fcm/send" "$r" '"success":1'
  r=$(curl -s -m 5 -d '{"to":"reject-1"}' "$u/rej/fcm/send"); expect "fake FCM /rej (reject)" "$r" 'NotRegistered'
  r=$(curl -s -m 5 -d '{"registration_ids":["a","b"]}' "$u/multi/fcm/send"); expect "fake FCM /multi (2)" "$r" '"success":2'
  r=$(curl -s -m 5 -d '{}' "$u/v1/projects/bench/messages:send"); expect "fake FCM v1" "$r" '"name"'
  r=$(curl -s -m 5 -d 'grant_type=x' "$u/token");             expect "fake token endpoint" "$r" 'bench-token'
  r=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -d '{}' "$u/up/abc");      expect "fake UnifiedPush" "$r" 200
  r=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -d '{}' "$u/up/gone/abc"); expect "fake UnifiedPush gone" "$r" 404
  local a="https://127.0.0.1:$APNS_PORT/3/device"
  r=$(curl -s -m 5 --http2 --cacert "$WORK/tls/ca.crt" -o /dev/null -w '%{http_code} %{http_version}' -d '{}' "$a/00ff"); expect "fake APNs" "$r" "200 2"
  r=$(curl -s -m 5 --http2 --cacert "$WORK/tls/ca.crt" -d '{}' "$a/bad0ff");  expect "fake APNs (unregistered)" "$r" Unregistered
  [ -n "$(ngx_counts)" ] || die "fake upstreams' /nginx_status gave no counters"
}

# --- the gateway ------------------------------------------------------------------------------
# Apps with Sygnal's and the pushkins' default settings: only what a deployment must set
# (credentials, and the endpoint pointing at the fakes). One app per built-in plugin (apns, gcm,
# unifiedpush, webpush) is always configured, so every built-in library is loaded and counted in
# the RSS.
#   $1 = the gateway config file; $2 = fcm-legacy | fcm-v1 (what app com.example.gcm is, as in
#   ../shared/perf); $3 = extra YAML appended under `apps:` (2-space indented entries)
write_gateway_config() {
  local cfg=$1 gcm=$2 extra_apps=${3:-} extra_top=${4:-} gcm_app
  if [ "$gcm" = fcm-v1 ]; then
    gcm_app="    type: gcm
    api_version: v1
    project_id: bench
    service_account_file: \"$WORK/tls/service_account.json\"
    endpoint: \"http://127.0.0.1:$UP_PORT\""
  else
    gcm_app="    type: gcm
    api_key: \"x\"
    endpoint: \"http://127.0.0.1:$UP_PORT\""
  fi
  cat > "$cfg" <<YAML
# written by bench/lib.sh ($gcm)
log:
  setup:
    version: 1
    disable_existing_loggers: false
    formatters:
      normal:
        format: "%(asctime)s [%(process)d] %(levelname)-5s %(name)s %(message)s"
    handlers:
      stderr:
        class: logging.StreamHandler
        formatter: normal
        stream: ext://sys.stderr
    loggers:
      sygnal:
        propagate: false
        handlers: [stderr]
        level: WARNING
      sygnal.access:
        propagate: false
        handlers: [stderr]
        level: WARNING
    root:
      handlers: [stderr]
      level: WARNING
  access:
    x_forwarded_for: false
http:
  bind_addresses: ['127.0.0.1']
  port: $GW_PORT
$extra_top
apps:
  com.example.gcm:
$gcm_app
  com.example.apns:
    type: apns
    keyfile: "$WORK/tls/apns_key.p8"
    key_id: BENCHKEY01
    team_id: BENCHTEAM1
    topic: com.example.app
    endpoint: "https://127.0.0.1:$APNS_PORT"
  com.example.up:
    type: unifiedpush
    allowed_endpoints: ['127.0.0.1']
  com.example.webpush:
    type: webpush
    vapid_private_key: "$WORK/tls/vapid_key.pem"
    vapid_contact_email: bench@example.org
$extra_apps
YAML
}

# Starts the gateway on $1; sets GW_PID, READY_MS (exec to GET /health = 200) and IDLE_RSS_MB.
start_gateway() {
  local cfg=$1 t0 code healthy=0 deadline
  [ -x "$GATEWAY_BIN" ] || die "gateway binary not found: $GATEWAY_BIN"
  t0=$(date +%s%N)
  # GATEWAY_WRAPPER: words run before the binary (bench/instructions.sh: valgrind).
  # shellcheck disable=SC2086
  (cd "$WORK" && SSL_CERT_FILE="$WORK/tls/ca.crt" exec ${GATEWAY_WRAPPER:-} "$GATEWAY_BIN" --config "$cfg") \
    </dev/null >>"$WORK/gateway.log" 2>&1 9>&- &
  GW_PID=$!
  record_pids "$GW_PID"
  deadline=$((SECONDS + HEALTH_WAIT_S))
  while [ $SECONDS -lt $deadline ]; do
    kill -0 "$GW_PID" 2>/dev/null || break
    code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$GW_PORT/health" || true)
    [ "$code" = 200 ] && { healthy=1; break; }
    sleep 0.01
  done
  READY_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
  if [ $healthy != 1 ]; then
    local why; why=$(tail -n 3 "$WORK/gateway.log" 2>/dev/null | tr '\n' ' ')
    kill -0 "$GW_PID" 2>/dev/null && die "gateway did not answer GET /health within ${HEALTH_WAIT_S}s (log: $why)"
    die "gateway exited during startup (log: $why)"
  fi
  sleep 0.5   # let startup allocations settle before reading the idle RSS
  IDLE_RSS_MB=$(awk '$1 == "VmRSS:" { printf "%.1f", $2 / 1024 }' "/proc/$GW_PID/status")
}
stop_gateway() {
  [ -n "$GW_PID" ] || return 0
  stop_tree "$GW_PID"
  GW_PID=""
}
gw_mem_mb() {  # VmHWM or VmRSS of the gateway, MB
  awk -v k="$1:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$GW_PID/status" 2>/dev/null || echo 0
}

# The body of a wrk Lua file (its `wrk.body = '...'` line), or of the n-th `bodies[n] = '...'`.
lua_body() {
  local f=$1 n=${2:-}
  if [ -z "$n" ]; then sed -n "s/^wrk.body = '\(.*\)'\$/\1/p" "$f"
  else sed -n "s/^bodies\[$n\] = '\(.*\)'\$/\1/p" "$f"; fi
}
# POSTs $1 to the gateway; prints "HTTP<code> <body without whitespace>"
notify() {
  curl -s -m 30 -o "$WORK/notify.out" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    --data-binary "$1" "http://127.0.0.1:$GW_PORT$NOTIFY_PATH" > "$WORK/notify.code" || true
  echo "HTTP$(cat "$WORK/notify.code") $(tr -d ' \n\t' < "$WORK/notify.out" 2>/dev/null)"
}
