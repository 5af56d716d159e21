#!/usr/bin/env bash
# Compare wsproxy with nginx, HAProxy and Caddy (Debian packages, stock
# settings plus what WebSocket proxying needs, 2 workers or threads each)
# in front of the same echo backend, and with the backend directly.
# Targets run interleaved, in a rotated order each round; the table
# reports medians, min-max, and the median of same-round ratios.
#
#   bench/run.sh            3 rounds
#   bench/run.sh -quick     1 round, shorter windows
#
# Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3 DUR=8s WARM=2s IDLE=9000 HOLD=25s
if [ "${1:-}" = "-quick" ]; then ROUNDS=1 DUR=3s WARM=1s IDLE=3000 HOLD=8s; fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need haproxy || ! need caddy; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light haproxy caddy >/dev/null
fi

TMP=$(mktemp -d)
RESULTS=${RESULTS:-bench/results/$(date +%Y%m%d-%H%M%S).jsonl}
mkdir -p "$(dirname "$RESULTS")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  pkill -f "$TMP" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

go build -o "$TMP/wsproxy" ./cmd/wsproxy
go build -o "$TMP/wsbench" ./bench/wsbench
go build -o "$TMP/echo" ./bench/echo

ECHO=127.0.0.1:19001
WSPROXY=127.0.0.1:18001 NGINX=127.0.0.1:18002 HAPROXY=127.0.0.1:18003 CADDY=127.0.0.1:18004

GOMAXPROCS=2 "$TMP/echo" -addr $ECHO 2>/dev/null & PIDS+=($!)

cat >"$TMP/wsproxy.yaml" <<EOF
listeners: [{address: "$WSPROXY"}]
admin: {address: "127.0.0.1:18091"}
log: {level: warn, access_log: false}
defaults: {ping_interval: 20s, max_message_bytes: 16MiB}
routes: [{path: /, pool: echo}]
pools:
  echo:
    backends: [{address: "$ECHO"}]
EOF
"$TMP/wsproxy" -config "$TMP/wsproxy.yaml" 2>"$TMP/wsproxy.log" & PIDS+=($!)

mkdir -p "$TMP/nginx"
cat >"$TMP/nginx.conf" <<EOF
worker_processes 2;
worker_rlimit_nofile 20000;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
daemon off;
events { worker_connections 19000; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx; proxy_temp_path $TMP/nginx;
  fastcgi_temp_path $TMP/nginx; uwsgi_temp_path $TMP/nginx; scgi_temp_path $TMP/nginx;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  server {
    listen $NGINX;
    location / {
      proxy_pass http://$ECHO;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 1h;
    }
  }
}
EOF
nginx -c "$TMP/nginx.conf" & PIDS+=($!)

cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 9800
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend fe
  bind $HAPROXY
  default_backend be
backend be
  server echo $ECHO
EOF
haproxy -f "$TMP/haproxy.cfg" -db & PIDS+=($!)

cat >"$TMP/Caddyfile" <<EOF
{
  admin off
  auto_https off
}
http://$CADDY {
  reverse_proxy $ECHO
}
EOF
GOMAXPROCS=2 XDG_DATA_HOME=$TMP XDG_CONFIG_HOME=$TMP caddy run --config "$TMP/Caddyfile" --adapter caddyfile 2>"$TMP/caddy.log" & PIDS+=($!)

sleep 2
# pids of a target's process tree (master and workers), comma separated
pids_of() {
  local root
  case $1 in
    wsproxy) root=$(pgrep -f "$TMP/wsproxy -config" | head -1) ;;
    nginx) root=$(pgrep -f "nginx -c $TMP" | head -1) ;;
    haproxy) root=$(pgrep -f "haproxy -f $TMP" | head -1) ;;
    caddy) root=$(pgrep -f "caddy run --config $TMP" | head -1) ;;
    direct) echo ""; return ;;
  esac
  [ -n "$root" ] || { echo "$1 is not running" >&2; return 1; }
  echo "$root$(pgrep -P "$root" | sed 's/^/,/' | tr -d '\n')"
}
addr_of() {
  case $1 in
    wsproxy) echo $WSPROXY ;; nginx) echo $NGINX ;; haproxy) echo $HAPROXY ;;
    caddy) echo $CADDY ;; direct) echo $ECHO ;;
  esac
}

TARGETS=(wsproxy nginx haproxy caddy direct)
run() { # workload target args...
  local w=$1 t=$2 pids; shift 2
  pids=$(pids_of "$t") || return 0
  "$TMP/wsbench" -url "ws://$(addr_of "$t")/" -name "$t" -pid "$pids" "$@" |
    sed "s/^{/{\"workload\":\"$w\",\"round\":$ROUND,/" >>"$RESULTS" ||
    echo "$w through $t failed" >&2
}
for ((ROUND = 0; ROUND < ROUNDS; ROUND++)); do
  order=("${TARGETS[@]:ROUND%5}" "${TARGETS[@]:0:ROUND%5}")
  echo "round $((ROUND + 1))/$ROUNDS: ${order[*]}" >&2
  for t in "${order[@]}"; do
    run rtt-100 "$t" -mode rtt -conns 100 -size 128 -duration $DUR -warmup $WARM
    run rtt-1000 "$t" -mode rtt -conns 1000 -size 128 -duration $DUR -warmup $WARM
    run tput-1MiB "$t" -mode throughput -conns 16 -size 1048576 -duration $DUR -warmup $WARM
    run sessions "$t" -mode sessions -conns 50 -duration $DUR -warmup $WARM
    if [ "$t" != direct ]; then
      run idle "$t" -mode idle -conns $IDLE -duration $HOLD
      sleep 3 # let the idle sessions' sockets close
    fi
  done
done

echo "results: $RESULTS" >&2
go run ./bench/report "$RESULTS"
