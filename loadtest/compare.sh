#!/usr/bin/env bash
# compare.sh: doze vs HAProxy (TCP mode, nbthread 1) vs direct, all in front of the SAME compute,
# plus cold start, thundering herd, bare-mariadbd start and idle-session memory. Prints one table.
#
# Everything runs on 127.0.0.1 and stops by itself. Overridable through the environment:
#   ROUNDS=3 DURATION=8s RELAY_CONNS="8 64" CHURN_WORKERS=8 SB_THREADS="8 64" SB_TIME=8
#   COLD_RUNS=9 FROZEN_RUNS=100 HERD=500 START_RUNS=9 IDLE=5000 IDLE_HOLD=10s
#   RESULTS=<dir> (default target/loadtest-results/<timestamp>)
#   PROJECTS=0 PROJECTS_DURATION=30s (PROJECTS>0 adds the multi-project scenario)
#   SKIP_BUILD=1 SKIP_SYSBENCH=1 SKIP_IDLE=1 SKIP_INSTALL=1 KEEP_WORK=1
#   DOZE_BIN=<path> (another doze build, for A/B runs) DOZE_ARGS="--proxy-threads 1" (added to serve)
#   COMPARE_HOOK=<file>: once doze, HAProxy and the compute are up, source FILE instead of running
#     the scenarios below (see loadtest/scripts/cpu-per-connection.sh)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
RELAY_CONNS=${RELAY_CONNS:-"8 64"}
CHURN_WORKERS=${CHURN_WORKERS:-8}
SB_THREADS=${SB_THREADS:-"8 64"}
SB_TIME=${SB_TIME:-8}
COLD_RUNS=${COLD_RUNS:-9}
FROZEN_RUNS=${FROZEN_RUNS:-100}
HERD=${HERD:-500}
START_RUNS=${START_RUNS:-9}
IDLE=${IDLE:-5000}
IDLE_HOLD=${IDLE_HOLD:-10s}
RESULTS=${RESULTS:-$ROOT/target/loadtest-results/$(date +%Y%m%d-%H%M%S)}
# The scheduler's check interval: 30 s, or 1 s when the projects scenario needs suspends to happen.
if [ "${PROJECTS:-0}" -gt 0 ]; then CHECK_INTERVAL=${CHECK_INTERVAL:-1s}; else CHECK_INTERVAL=${CHECK_INTERVAL:-30s}; fi
PASSWORD=bench-password-1
DB=sbtest

log() { echo "[compare $(date +%T)] $*" >&2; }
die() { log "FATAL: $*"; exit 1; }
FAILED=()
# Runs one measurement; a failure is reported and recorded, and the run goes on.
step() {
  local name=$1; shift
  log "step: $name"
  if ! "$@"; then
    log "step FAILED: $name (see the errors above)"
    FAILED+=("$name")
  fi
}

WORK=$(mktemp -d /tmp/doze-compare.XXXXXX)
chmod 755 "$WORK"
DOZE_PID="" HAPROXY_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  log "cleaning up"
  if [ -n "$HAPROXY_PID" ] && kill -0 "$HAPROXY_PID" 2>/dev/null; then
    kill "$HAPROXY_PID" 2>/dev/null; wait "$HAPROXY_PID" 2>/dev/null
  fi
  if [ -n "$DOZE_PID" ] && kill -0 "$DOZE_PID" 2>/dev/null; then
    kill -TERM "$DOZE_PID" 2>/dev/null   # doze drains sessions and stops its computes
    for _ in $(seq 1 150); do kill -0 "$DOZE_PID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$DOZE_PID" 2>/dev/null && { log "doze did not stop; SIGKILL"; kill -KILL "$DOZE_PID"; }
    wait "$DOZE_PID" 2>/dev/null
  fi
  # Computes doze left behind (only processes whose command line names this run's work dir).
  local left
  left=$(pgrep -f -- "$WORK/" || true)
  if [ -n "$left" ]; then
    log "stopping leftover processes of this run: $left"
    kill $left 2>/dev/null; sleep 1; kill -KILL $left 2>/dev/null
  fi
  if [ "${KEEP_WORK:-0}" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# packages
need_pkgs=()
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
command -v sysbench >/dev/null || need_pkgs+=(sysbench)
{ command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; } || need_pkgs+=(mariadb-server)
command -v mariadb-install-db >/dev/null || need_pkgs+=(mariadb-server)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v jq >/dev/null || need_pkgs+=(jq)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && [ "${SKIP_INSTALL:-0}" != 1 ]; then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq "${need_pkgs[@]}" >&2 || die "apt-get install failed"
  else
    die "missing packages: ${need_pkgs[*]} (install them, or run as root)"
  fi
fi
export PATH=$PATH:/usr/sbin:/sbin

# ---------------------------------------------------------------------------------------------
# build
cd "$ROOT"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building release binaries (cargo build --release -p doze-proxy -p doze-loadtest)"
  cargo build --release -p doze-proxy -p doze-loadtest >&2 || die "build failed"
fi
DOZE=${DOZE_BIN:-$ROOT/target/release/doze}
LT=$ROOT/target/release/doze-loadtest
[ -x "$DOZE" ] || die "$DOZE not built"
[ -x "$LT" ] || die "$LT not built"
mkdir -p "$RESULTS"
log "results go to $RESULTS"

# Many sessions need many descriptors (doze holds a client and a backend socket per session).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ulimit -n 65536 2>/dev/null || true
log "open files limit: $(ulimit -n)"

# A port below the ephemeral range (so client sockets in TIME_WAIT cannot hold it) that nothing
# listens on.
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
  local p span=$((EPHEMERAL_LOW - 10000))
  [ "$span" -gt 100 ] || span=20000
  for _ in $(seq 1 100); do
    p=$((10000 + RANDOM % span))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
# doze
PROXY_PORT=$(free_port) || die "no free port"
ADMIN_PORT=$(free_port) || die "no free port"
HAPROXY_PORT=$(free_port) || die "no free port"
mkdir -p "$WORK/doze"
# The admin API always needs a token: hand doze and the load generator the same one.
DOZE_ADMIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export DOZE_ADMIN_TOKEN
log "starting doze: proxy 127.0.0.1:$PROXY_PORT, admin 127.0.0.1:$ADMIN_PORT"
"$DOZE" serve --proxy-listen "127.0.0.1:$PROXY_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --db-dsn "sqlite://$WORK/doze/state.db" --data-dir "$WORK/doze" \
  --idle-timeout 5m --check-interval "$CHECK_INTERVAL" --wake-timeout 30s ${DOZE_ARGS:-} >"$WORK/doze.log" 2>&1 &
DOZE_PID=$!
ADMIN="http://127.0.0.1:$ADMIN_PORT"
for i in $(seq 1 150); do
  curl -fsS "$ADMIN/healthz" >/dev/null 2>&1 && break
  kill -0 "$DOZE_PID" 2>/dev/null || { tail -20 "$WORK/doze.log" >&2; die "doze exited"; }
  [ "$i" = 150 ] && { tail -20 "$WORK/doze.log" >&2; die "doze not healthy after 30 s"; }
  sleep 0.2
done
log "doze is up (pid $DOZE_PID)"

api() { # api METHOD PATH [JSON]
  local out
  if [ $# -ge 3 ]; then
    out=$(curl -sS -X "$1" -H "authorization: Bearer $DOZE_ADMIN_TOKEN" -H 'content-type: application/json' -d "$3" -w '\n%{http_code}' "$ADMIN$2")
  else
    out=$(curl -sS -X "$1" -H "authorization: Bearer $DOZE_ADMIN_TOKEN" -w '\n%{http_code}' "$ADMIN$2")
  fi || return 1
  local code=${out##*$'\n'} body=${out%$'\n'*}
  if [ "${code:0:1}" != 2 ]; then log "$1 $2 -> HTTP $code: $body"; return 1; fi
  echo "$body"
}

log "creating project bench (idle_timeout 0), its compute and role bench"
api POST /api/v1/projects '{"name":"bench","config":{"idle_timeout":0}}' >/dev/null || die "create project"
IDLE_OK=1
# 5000 idle sessions through doze need 5000 backend connections: raise the compute's max_connections.
if ! api POST /api/v1/projects/bench/compute \
  "{\"config\":{\"mariadb_options\":{\"max_connections\":$((IDLE + 500))}}}" >/dev/null; then
  log "compute config mariadb_options.max_connections refused; creating a default compute (idle test skipped)"
  IDLE_OK=0
  api POST /api/v1/projects/bench/compute '{"config":{}}' >/dev/null || die "create compute"
fi
api POST /api/v1/projects/bench/roles "{\"name\":\"bench\",\"password\":\"$PASSWORD\"}" >/dev/null || die "create role"
WAKE=$(api GET "/api/v1/wake_compute?endpointish=bench") || die "wake_compute"
COMPUTE=$(echo "$WAKE" | jq -r .address)
COMPUTE_ID=$(echo "$WAKE" | jq -r .compute_id)
[ -n "$COMPUTE" ] && [ "$COMPUTE" != null ] || die "wake_compute gave no address: $WAKE"
log "compute $COMPUTE_ID is at $COMPUTE"

# ---------------------------------------------------------------------------------------------
# HAProxy: TCP mode, one thread (nbthread 1), large timeouts, in front of the same compute.
# HAProxy needs about 2 descriptors per connection: keep maxconn within the open-files limit.
HAPROXY_MAXCONN=$(( ($(ulimit -n) - 200) / 2 ))
[ "$HAPROXY_MAXCONN" -gt 20000 ] && HAPROXY_MAXCONN=20000
cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn $HAPROXY_MAXCONN
    nbthread 1
defaults
    mode tcp
    timeout connect 10s
    timeout client 1h
    timeout server 1h
listen mysql
    bind 127.0.0.1:$HAPROXY_PORT
    maxconn $HAPROXY_MAXCONN
    server compute $COMPUTE
EOF
haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
HAPROXY_PID=$!
sleep 0.5
kill -0 "$HAPROXY_PID" 2>/dev/null || { cat "$WORK/haproxy.log" >&2; die "haproxy did not start"; }
log "haproxy (pid $HAPROXY_PID) on 127.0.0.1:$HAPROXY_PORT -> $COMPUTE"

target_of() { case $1 in direct) echo "$COMPUTE";; haproxy) echo "127.0.0.1:$HAPROXY_PORT";; doze) echo "127.0.0.1:$PROXY_PORT";; esac; }
user_of() { case $1 in doze) echo bench.bench;; *) echo bench;; esac; }
lt() { # lt VIA NAME ARGS...: one doze-loadtest run, JSON + plot into the results dir
  local via=$1 name=$2; shift 2
  "$LT" --target "$(target_of "$via")" --user "$(user_of "$via")" --password "$PASSWORD" --database "$DB" \
    --via "$via" --doze-pid "$DOZE_PID" --json "$RESULTS/$name.json" --plot "$RESULTS/$name.png" "$@" \
    | tee -a "$RESULTS/summaries.txt"
}

log "preparing sbtest (4 tables x 10k rows) directly on the compute"
"$LT" --target "$COMPUTE" --user bench --password "$PASSWORD" --database "$DB" \
  relay --prepare --duration 0 --tables 4 --table-size 10000 || die "prepare failed"

if [ -n "${COMPARE_HOOK:-}" ]; then
  log "running $COMPARE_HOOK instead of the scenarios"
  # shellcheck disable=SC1090
  source "$COMPARE_HOOK"
  exit $?
fi

# ---------------------------------------------------------------------------------------------
# relay + churn, alternating direct / haproxy / doze
for r in $(seq 1 "$ROUNDS"); do
  for c in $RELAY_CONNS; do
    for via in direct haproxy doze; do
      step "relay c$c $via r$r" lt "$via" "relay-c$c-$via-r$r" --label "relay-c$c" --round "$r" \
        relay --connections "$c" --duration "$DURATION"
    done
  done
  for via in direct haproxy doze; do
    step "churn w$CHURN_WORKERS $via r$r" lt "$via" "churn-w$CHURN_WORKERS-$via-r$r" \
      --label "churn-w$CHURN_WORKERS" --round "$r" churn --workers "$CHURN_WORKERS" --duration "$DURATION"
  done
done

# ---------------------------------------------------------------------------------------------
# sysbench as an outside reference, alternating
sysbench_run() { # VIA THREADS ROUND
  local via=$1 t=$2 r=$3 hp out
  hp=$(target_of "$via")
  out="$RESULTS/sysbench-t$t-$via-r$r.txt"
  sysbench oltp_point_select --mysql-host="${hp%:*}" --mysql-port="${hp##*:}" --mysql-user="$(user_of "$via")" \
    --mysql-password="$PASSWORD" --mysql-db="$DB" --tables=4 --table-size=10000 --threads="$t" \
    --time="$SB_TIME" --report-interval=0 run >"$out" 2>&1 || { tail -5 "$out" >&2; return 1; }
  "$LT" --via "$via" --label "sysbench-t$t" --round "$r" --target "$hp" --json "$RESULTS/sysbench-t$t-$via-r$r.json" \
    sysbench-import --input "$out" --threads "$t" | tee -a "$RESULTS/summaries.txt"
}
if [ "${SKIP_SYSBENCH:-0}" != 1 ]; then
  for r in $(seq 1 "$ROUNDS"); do
    for t in $SB_THREADS; do
      for via in direct haproxy doze; do
        step "sysbench t$t $via r$r" sysbench_run "$via" "$t" "$r"
      done
    done
  done
fi

# ---------------------------------------------------------------------------------------------
# herds: N clients at once on the running compute (direct, HAProxy, doze), then cold ones below
step "herd $HERD direct" lt direct "herd-$HERD-direct" --label "herd-$HERD" herd --clients "$HERD"
step "herd $HERD haproxy" lt haproxy "herd-$HERD-haproxy" --label "herd-$HERD" herd --clients "$HERD"
step "herd $HERD doze (running compute)" lt doze "herd-$HERD-doze" --label "herd-$HERD" \
  --admin "$ADMIN" --project bench herd --clients "$HERD" --no-suspend

# Bare mariadbd start -> greeting (baseline for cold start), then doze cold starts.
step "mariadbd-start" "$LT" --via direct --label start --json "$RESULTS/start-mariadbd.json" \
  --plot "$RESULTS/start-mariadbd.png" mariadbd-start --runs "$START_RUNS"
step "cold-start" lt doze "start-cold-doze" --label start --admin "$ADMIN" --project bench \
  cold-start --runs "$COLD_RUNS"
step "herd $HERD doze (suspended first)" lt doze "herd-$HERD-cold-doze" --label "herd-$HERD-cold" \
  --admin "$ADMIN" --project bench herd --clients "$HERD"
# The frozen tier: the same, resuming from frozen (a thaw) instead of stopped (a start).
step "cold-start from frozen" lt doze "start-frozen-doze" --label start-frozen --admin "$ADMIN" --project bench \
  cold-start --runs "$FROZEN_RUNS" --from frozen
step "herd $HERD doze (frozen first)" lt doze "herd-$HERD-frozen-doze" --label "herd-$HERD-frozen" \
  --admin "$ADMIN" --project bench herd --clients "$HERD" --from frozen
# The compute may have moved (suspend/resume); HAProxy's address is now stale: stop it.
kill "$HAPROXY_PID" 2>/dev/null; wait "$HAPROXY_PID" 2>/dev/null; HAPROXY_PID=""

# ---------------------------------------------------------------------------------------------
# idle sessions: doze's RSS per session
if [ "${SKIP_IDLE:-0}" = 1 ]; then
  log "idle: skipped (SKIP_IDLE=1)"
elif [ "$IDLE_OK" = 1 ]; then
  step "idle $IDLE doze" lt doze "idle-$IDLE-doze" --label "idle-$IDLE" \
    idle --connections "$IDLE" --hold "$IDLE_HOLD"
else
  log "idle: SKIPPED: the compute's max_connections could not be raised, and doze opens one backend connection per client"
fi

# ---------------------------------------------------------------------------------------------
# optional: many projects with Zipf traffic (PROJECTS=0 skips; each project is a mariadbd)
if [ "${PROJECTS:-0}" -gt 0 ]; then
  step "projects $PROJECTS" lt doze "projects-$PROJECTS-doze" --label "projects-$PROJECTS" --admin "$ADMIN" \
    projects --projects "$PROJECTS" --duration "${PROJECTS_DURATION:-30s}"
fi

# ---------------------------------------------------------------------------------------------
log "doze RSS at the end: $(grep VmRSS /proc/"$DOZE_PID"/status 2>/dev/null | awk '{print $2, $3}')"
echo
echo "doze vs HAProxy (TCP, nbthread 1) vs direct, same compute; medians over $ROUNDS round(s) of $DURATION"
"$LT" report --results "$RESULTS" | tee "$RESULTS/table.txt"
echo "'start' row: direct = bare mariadbd spawn -> TCP greeting; doze = suspend, then connect -> first result of SELECT 1"
echo "results (JSON, PNG plots, sysbench output): $RESULTS"
if [ ${#FAILED[@]} -gt 0 ]; then
  log "FAILED steps: ${FAILED[*]}"
  exit 1
fi
