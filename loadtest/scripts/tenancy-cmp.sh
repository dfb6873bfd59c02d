#!/usr/bin/env bash
# Side by side: doze BEFORE (e.g. a release build of 540e311, before tenants) against AFTER
# (default target/release/doze), each a full `doze serve` with its own compute on SQLite,
# alternating, 3 rounds: cold resume from stopped (AFTER's project is in a tenant with every
# quota, so each of its cold starts runs the quota check) and warm churn.
# Run from the repository root: BEFORE=/path/to/old/doze loadtest/scripts/tenancy-cmp.sh
set -u
BEFORE=${BEFORE:?set BEFORE to the doze binary to compare against}
AFTER=${AFTER:-target/release/doze}
LT=${LT:-target/release/doze-loadtest}
W=${WORK:-/tmp/tenancy-cmp}
TOKEN=bench-admin-token-0123456789
read -r PB AB PH AH < <(python3 -c "
import socket
ss=[socket.socket() for _ in range(4)]
[s.bind(('127.0.0.1',0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])")
rm -rf "$W/base" "$W/head"
mkdir -p "$W/base" "$W/head"
# Computes run as users of their own when doze is root: they must be able to pass through.
chmod 755 "$W" "$W/base" "$W/head"
serve() { # binary proxy-port admin-port dir
  DOZE_ADMIN_TOKEN=$TOKEN "$1" serve --proxy-listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$3" \
    --data-dir "$4/data" --db-dsn "sqlite://$4/state.db" --idle-timeout 0 --suspend-mode stop \
    --log-level warn >"$4.log" 2>&1 &
}
serve "$BEFORE" "$PB" "$AB" "$W/base"; B=$!
serve "$AFTER" "$PH" "$AH" "$W/head"; H=$!
trap 'kill $B $H 2>/dev/null; wait $B $H 2>/dev/null' EXIT
sleep 2
api() { curl -fsS -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@" >/dev/null; }
api -X POST "http://127.0.0.1:$AH/api/v1/tenants" \
  -d '{"name":"bench-t","quotas":{"max_projects":10,"max_running_computes":5,"max_memory":"8Gi"}}'
for side in "$AB null" "$AH \"bench-t\""; do
  set -- $side
  api -X POST "http://127.0.0.1:$1/api/v1/projects" -d "{\"name\":\"bench\",\"tenant\":$2}"
  api -X POST "http://127.0.0.1:$1/api/v1/projects/bench/roles" -d '{"name":"bench","password":"bench-password-1"}'
  api -X POST "http://127.0.0.1:$1/api/v1/projects/bench/compute" -d '{}'
done
for round in 1 2 3; do
  for side in "before $PB $AB" "after $PH $AH"; do
    set -- $side
    common=(--target "127.0.0.1:$2" --user bench.bench --password bench-password-1)
    "$LT" "${common[@]}" --admin "http://127.0.0.1:$3" --admin-token "$TOKEN" --project bench \
      cold-start --runs 9 --from stopped 2>/dev/null | grep -m1 p50 | sed "s/^/r$round cold $1: /"
    "$LT" "${common[@]}" churn --workers 8 --duration 6s 2>/dev/null |
      grep "connections/s" | sed "s/^/r$round churn $1: /"
  done
done
