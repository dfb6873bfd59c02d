#!/usr/bin/env bash
# Runs doze on this machine with embedded defaults: installs the MariaDB server binaries when
# they are missing, builds doze, and starts `doze serve` (proxy on 127.0.0.1:6033, admin API on
# 127.0.0.1:8080, state and computes under ./doze-data). Extra arguments go to `doze serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
  echo "run-local: installing mariadb-server (the compute binaries)" >&2
  sudo_cmd=""; [ "$(id -u)" != 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  # Keep the package from starting a system-wide server: doze starts its own computes.
  $sudo_cmd sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends mariadb-server mariadb-client >/dev/null
  $sudo_cmd rm -f /usr/sbin/policy-rc.d
fi
cargo build --release --locked -p doze-proxy
exec ./target/release/doze serve "$@"
