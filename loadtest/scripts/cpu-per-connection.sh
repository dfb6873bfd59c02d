#!/usr/bin/env bash
# CPU per connection: where a connection's cost goes, direct vs HAProxy vs doze.
#
# Runs churn (connect, log in, SELECT 1, quit; 8 workers) and a herd of 500 clients on a running
# compute through each target in turn, and reads the CPU time (utime + stime, /proc/PID/stat)
# that doze, HAProxy, the compute's mariadbd and the load generator used for it. Dividing by the
# connections served gives microseconds of CPU per connection for each process: on a 2-core
# machine the sum bounds the rate, so this says which process a goal has to come out of.
# The herd rows add doze's mean client-handshake and backend-login times (its histograms).
#
#   loadtest/scripts/cpu-per-connection.sh            # ROUNDS=2 DURATION=5s HERD=500
#   DOZE_ARGS="--log-level warn" loadtest/scripts/cpu-per-connection.sh
#
# Uses loadtest/compare.sh for the setup (doze, HAProxy nbthread 1, one compute, sbtest), so
# every variable of compare.sh applies (SKIP_BUILD=1, DOZE_BIN=..., DOZE_ARGS=...).
set -uo pipefail

if [ -z "${CPU_PER_CONNECTION_HOOK:-}" ]; then
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  CPU_PER_CONNECTION_HOOK=1 COMPARE_HOOK="$here/cpu-per-connection.sh" \
    exec bash "$here/../compare.sh"
fi

# Sourced by compare.sh from here on: DOZE_PID, HAPROXY_PID, WORK, ADMIN, LT, target_of,
# user_of, PASSWORD and DB are set.
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5s}
HERD=${HERD:-500}
MARIADBD_PID=$(pgrep -f "mariadbd.*$WORK" | head -1)
[ -n "$MARIADBD_PID" ] || die "no mariadbd of this run found"
TICK=$(getconf CLK_TCK)

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
pid_of() { case $1 in doze) echo "$DOZE_PID";; haproxy) echo "$HAPROXY_PID";; *) echo "";; esac; }
histogram_sums() {
  curl -s -H "authorization: Bearer $DOZE_ADMIN_TOKEN" "$ADMIN/metrics" |
    awk '/^doze_proxy_(handshake|backend_login)_duration_seconds_(sum|count)/ {printf "%s ", $2}'
}

# One scenario through VIA: prints served connections, rate and CPU us per connection.
measure() { # measure SCENARIO VIA ARGS...
  local scenario=$1 via=$2 proxy_pid m0 p0 lt_out n t0 t1 h0 h1
  shift 2
  proxy_pid=$(pid_of "$via")
  m0=$(ticks "$MARIADBD_PID")
  p0=0; [ -n "$proxy_pid" ] && p0=$(ticks "$proxy_pid")
  [ "$via" = doze ] && h0=$(histogram_sums)
  t0=$(date +%s.%N)
  lt_out=$( { /usr/bin/time -f "LTCPU %U %S" "$LT" --target "$(target_of "$via")" --user "$(user_of "$via")" \
    --password "$PASSWORD" --database "$DB" --via "$via" "$@" 2>&1; } 2>&1)
  t1=$(date +%s.%N)
  n=$(echo "$lt_out" | awk '/^ok=/ {sub("ok=", "", $1); print $1}' | tail -1)
  [ -n "$n" ] && [ "$n" -gt 0 ] || { echo "$lt_out" | tail -5 >&2; return 1; }
  local lt_cpu m1 p1 extra=""
  lt_cpu=$(echo "$lt_out" | awk '/^LTCPU/ {print $2 + $3}')
  m1=$(ticks "$MARIADBD_PID")
  p1=0; [ -n "$proxy_pid" ] && p1=$(ticks "$proxy_pid")
  if [ "$via" = doze ]; then
    h1=$(histogram_sums)
    extra=$(echo "$h0 $h1" | awk '{ if ($6 > $2) printf " handshake_mean_ms=%.1f", ($5 - $1) / ($6 - $2) * 1000;
                                    if ($8 > $4) printf " backend_login_mean_ms=%.1f", ($7 - $3) / ($8 - $4) * 1000 }')
  fi
  echo "$lt_out" | awk -v s="$scenario" -v v="$via" -v n="$n" -v t="$(echo "$t1 - $t0" | bc)" \
    -v lt="$lt_cpu" -v m="$((m1 - m0))" -v p="$((p1 - p0))" -v hz="$TICK" -v extra="$extra" '
    /^ok=/ { line = $0 }
    END {
      us = 1e6 / n
      printf "%-6s %-8s conns=%-6d %8.0f conn/s  cpu us/conn: proxy=%5.1f mariadbd=%5.1f loadgen=%5.1f%s  | %s\n",
        s, v, n, n / t, p / hz * us, m / hz * us, lt * us, extra, line
    }'
}

for r in $(seq 1 "$ROUNDS"); do
  for via in direct haproxy doze; do
    measure churn "$via" churn --workers 8 --duration "$DURATION"
  done
  for via in direct haproxy doze; do
    measure herd "$via" herd --clients "$HERD"
    sleep 1
  done
done
