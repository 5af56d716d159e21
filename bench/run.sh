#!/usr/bin/env bash
# Compare wsproxy with nginx, HAProxy and Caddy (Debian's packages, stock
# settings plus what WebSocket proxying needs, 2 workers or threads each)
# in front of the same echo backend, and with the backend directly.
#
#   bench/run.sh [-quick] [-rounds N] [-transport plain|tls|both]
#
# Workloads: round trips of 128 B over 100 and over 1000 connections,
# 1 MiB messages over 16 connections, sessions/s (connect, upgrade, close)
# with 50 workers, and proxy memory with 9000 idle sessions (proxies only).
# Each runs over plain TCP (ws://) and over TLS (wss://: TLS 1.3, one P-256
# certificate made for the run, every handshake a full one); -transport
# picks one (default both). Each round runs every workload through every
# target, plain then TLS, the targets in an order rotated by one each
# round. The tables give medians over rounds, ranges, and wsproxy's ratio
# to each target as the median of same-round ratios. Raw JSON lines go to
# bench/results/ (or $RESULTS).
#
# Everything listens on 127.0.0.1, on free ports picked at start, runs in
# the foreground of this script with configs in a temporary directory (no
# system service is started), and stops by itself: bench/README.md gives
# the time each kind of run takes.
set -euo pipefail

QUICK=0
ROUNDS=
TRANSPORT=both
while [ $# -gt 0 ]; do
	case $1 in
	-quick | --quick) QUICK=1 ;;
	-rounds | --rounds)
		ROUNDS=${2:?-rounds needs a number}
		shift
		;;
	-transport | --transport)
		TRANSPORT=${2:?-transport needs plain, tls or both}
		shift
		;;
	-h | -help | --help)
		sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "run.sh: unknown argument $1 (try -h)" >&2
		exit 2
		;;
	esac
	shift
done

case $TRANSPORT in
plain | tls) TRANSPORTS=("$TRANSPORT") ;;
both) TRANSPORTS=(plain tls) ;;
*)
	echo "run.sh: -transport $TRANSPORT: want plain, tls or both" >&2
	exit 2
	;;
esac
TLS=0
[ "$TRANSPORT" = plain ] || TLS=1

if [ "$QUICK" = 1 ]; then
	: "${ROUNDS:=1}"
	WARM=1s DUR=3s HOLD=8s
else
	: "${ROUNDS:=3}"
	WARM=2s DUR=5s HOLD=22s # HOLD: 2 s to settle, then 20 s, one ping interval of wsproxy's
fi
IDLE=${IDLE:-9000}
# Stop starting new runs past this many seconds of runs (the table reports
# what ran): per round, a little more than one takes on the 2-core bench
# machine under load. TLS takes longer: 9000 idle sessions are 9000 full
# handshakes.
BUDGET=0
for tr in "${TRANSPORTS[@]}"; do
	case $tr$QUICK in
	plain0) BUDGET=$((BUDGET + 350 * ROUNDS)) ;;
	tls0) BUDGET=$((BUDGET + 390 * ROUNDS)) ;;
	plain1) BUDGET=$((BUDGET + 240 * ROUNDS)) ;;
	tls1) BUDGET=$((BUDGET + 360 * ROUNDS)) ;;
	esac
done

cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH=$PATH:/usr/sbin:/sbin
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- the anchors, from Debian's packages -----------------------------------
install_missing() {
	local pkgs=() sudo= prc=/usr/sbin/policy-rc.d made=0
	command -v nginx >/dev/null || pkgs+=(nginx)
	command -v haproxy >/dev/null || pkgs+=(haproxy)
	command -v caddy >/dev/null || pkgs+=(caddy)
	[ ${#pkgs[@]} -gt 0 ] || return 0
	[ "$(id -u)" = 0 ] || sudo=sudo
	log "installing ${pkgs[*]}"
	# Keep the packages' own services from starting: the kit runs its own.
	if [ ! -e $prc ]; then
		printf '#!/bin/sh\nexit 101\n' | $sudo tee $prc >/dev/null
		$sudo chmod 755 $prc
		made=1
	fi
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || true
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null ||
		log "warning: apt-get install ${pkgs[*]} failed; the missing targets are skipped"
	if [ $made = 1 ]; then $sudo rm -f $prc; fi
}
install_missing

# --- temp dir, cleanup ------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/wsbench.XXXXXX")
RESULTS=${RESULTS:-$ROOT/bench/results/$(date +%Y%m%d-%H%M%S).jsonl}
mkdir -p "$(dirname "$RESULTS")"
: >"$RESULTS"
declare -A PID=() PORT=()
cleanup() {
	local name
	trap - EXIT INT TERM
	for name in "${!PID[@]}"; do stop_target "$name" & done
	wait 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=100000

# --- build ------------------------------------------------------------------
log "building"
go build -o "$TMP/wsbench" ./bench/wsbench
go build -o "$TMP/echo" ./bench/echo
go build -o "$TMP/report" ./bench/report
go build -o "$TMP/certgen" ./bench/certgen
HAVE_WSPROXY=1
if ! go build -o "$TMP/wsproxy" ./cmd/wsproxy 2>"$TMP/build.log"; then
	log "warning: wsproxy does not build; it is skipped:"
	sed 's/^/    /' "$TMP/build.log" >&2
	HAVE_WSPROXY=0
fi

# --- ports --------------------------------------------------------------------
in_use() { ss -Htan 2>/dev/null | awk '{print $4}' | grep -q ":$1\$"; }
port=$((20000 + RANDOM % 9000)) # below the ephemeral range
for name in echo wsproxy wsproxy_admin nginx haproxy caddy; do
	while in_use $port; do port=$((port + 1)); done
	PORT[$name]=$port
	port=$((port + 1))
	[ $TLS = 1 ] && [ $name != wsproxy_admin ] || continue
	while in_use $port; do port=$((port + 1)); done
	PORT[${name}_tls]=$port # the same target's wss listener
	port=$((port + 1))
done
PORT[direct]=${PORT[echo]}
PORT[direct_tls]=${PORT[echo_tls]:-}
ECHO=127.0.0.1:${PORT[echo]}

# --- TLS ----------------------------------------------------------------------
# One P-256 certificate for 127.0.0.1, signed by a CA made for this run;
# the load client verifies with that CA. Each target's TLS settings are the
# obvious production ones for TLS 1.3 with full handshakes: no session
# tickets and no session cache where the server has a switch for them.
CERTS=$TMP/tls
TLSARGS=()
if [ $TLS = 1 ]; then
	"$TMP/certgen" -dir "$CERTS"
	TLSARGS=(-ca "$CERTS/ca.pem")
fi

# url NAME TRANSPORT: where the load client connects
url() {
	if [ "$2" = tls ]; then
		echo "wss://127.0.0.1:${PORT[${1}_tls]}/"
	else
		echo "ws://127.0.0.1:${PORT[$1]}/"
	fi
}

# targs TRANSPORT: the load client's arguments for it
targs() { if [ "$1" = tls ]; then echo "${TLSARGS[@]}"; fi; }

# --- targets --------------------------------------------------------------------
# start NAME CMD...: run CMD in the background with its output in the temp dir
start() {
	local name=$1
	shift
	"$@" >>"$TMP/$name.log" 2>&1 &
	PID[$name]=$!
}

alive() { [ -n "${PID[$1]:-}" ] && kill -0 "${PID[$1]}" 2>/dev/null; }

# pids NAME: the target's process and its children (nginx's workers)
pids() {
	local p=${PID[$1]:-}
	[ -n "$p" ] || return 0
	echo "$p$(pgrep -P "$p" | sed 's/^/,/' | tr -d '\n')"
}

# stop_target NAME: SIGTERM, then after 10 s SIGKILL, to the process and
# its children
stop_target() {
	local name=$1 tree p i
	[ -n "${PID[$name]:-}" ] || return 0
	tree=$(pids "$name" | tr , ' ')
	kill -TERM "${PID[$name]}" 2>/dev/null || true
	for i in $(seq 100); do
		alive "$name" || break
		sleep 0.1
	done
	for p in $tree; do kill -KILL "$p" 2>/dev/null || true; done
	wait "${PID[$name]}" 2>/dev/null || true
	unset "PID[$name]"
}

# restart NAME: a fresh process, so that a measure of memory starts from a
# clean baseline and later runs do not inherit the idle sessions' heap
restart() {
	stop_target "$1"
	launch "$1"
	ready "$1"
}

# ready NAME: wait until a one-connection round trip through NAME works,
# over each transport run; OK[NAME:TRANSPORT] says which did
declare -A OK=()
ready() {
	local name=$1 tr i bad=0
	for tr in "${TRANSPORTS[@]}"; do
		unset "OK[$name:$tr]"
		for i in $(seq 50); do
			if ! alive "$name" && [ "$name" != direct ]; then
				log "warning: $name exited:"
				tail -5 "$TMP/$name.log" | sed 's/^/    /' >&2
				return 1
			fi
			# shellcheck disable=SC2046 # targs is a list of words
			if "$TMP/wsbench" -url "$(url "$name" "$tr")" $(targs "$tr") -mode rtt -conns 1 -warmup 0s -duration 100ms >/dev/null 2>&1; then
				OK[$name:$tr]=1
				break
			fi
			sleep 0.2
		done
		if [ -z "${OK[$name:$tr]:-}" ]; then
			log "warning: $name does not answer on $(url "$name" "$tr"):"
			tail -5 "$TMP/$name.log" | sed 's/^/    /' >&2
			bad=1
		fi
	done
	return $bad
}

ECHOTLS=()
if [ $TLS = 1 ]; then
	ECHOTLS=(-tls-addr "127.0.0.1:${PORT[echo_tls]}" -cert "$CERTS/cert.pem" -key "$CERTS/key.pem")
fi
start echo "$TMP/echo" -addr "$ECHO" "${ECHOTLS[@]}"
TARGETS=()

if [ $HAVE_WSPROXY = 1 ]; then
	if [ $TLS = 1 ]; then
		WSPROXY_TLS="  - address: \"127.0.0.1:${PORT[wsproxy_tls]}\"
    tls:
      min_version: \"1.3\"
      certificates: [{cert_file: \"$CERTS/cert.pem\", key_file: \"$CERTS/key.pem\"}]"
	fi
	cat >"$TMP/wsproxy.yaml" <<EOF
listeners:
  - address: "127.0.0.1:${PORT[wsproxy]}"
${WSPROXY_TLS:-}
admin:
  address: "127.0.0.1:${PORT[wsproxy_admin]}"
log:
  level: warn
  access_log: false
# The derived caps leave fewer sessions than the idle test holds; these fit
# the open-files limit of the bench machines (2 x sessions + 2 x connections
# + the 5% reserve).
admission:
  max_sessions: $((IDLE + 100))
  max_connections: 300
defaults:
  ping_interval: 20s
  idle_timeout: 10m
  read_timeout: 60s
  max_message_bytes: 16MiB
routes:
  - path: /
    pool: echo
pools:
  echo:
    backends:
      - {address: "$ECHO"}
EOF
	TARGETS+=(wsproxy)
fi

if command -v nginx >/dev/null; then
	mkdir -p "$TMP/nginx"
	user=
	if [ "$(id -u)" = 0 ]; then
		if getent passwd www-data >/dev/null; then user="user www-data;"; else user="user nobody nogroup;"; fi
	fi
	if [ $TLS = 1 ]; then
		NGINX_TLS="    listen 127.0.0.1:${PORT[nginx_tls]} ssl backlog=4096;
    ssl_certificate $CERTS/cert.pem;
    ssl_certificate_key $CERTS/key.pem;
    ssl_protocols TLSv1.3;
    ssl_session_tickets off;
    ssl_session_cache off;"
	fi
	cat >"$TMP/nginx/nginx.conf" <<EOF
$user
worker_processes 2;
worker_rlimit_nofile $NOFILE;
pid $TMP/nginx/nginx.pid;
daemon off;
error_log $TMP/nginx/error.log warn;
events {
  worker_connections $((NOFILE - 500));
}
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  map \$http_upgrade \$connection_upgrade {
    default upgrade;
    ''      close;
  }
  server {
    listen 127.0.0.1:${PORT[nginx]} backlog=4096;
${NGINX_TLS:-}
    location / {
      proxy_pass http://$ECHO;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }
  }
}
EOF
	TARGETS+=(nginx)
fi

if command -v haproxy >/dev/null; then
	# HAProxy needs about two descriptors per connection, and checks it
	# against the limit at start.
	HMAXCONN=$(((NOFILE - 500) / 2))
	if [ $TLS = 1 ]; then
		# no session cache either, as nginx's ssl_session_cache off: the
		# session ids OpenSSL still sends cannot resume anything
		HAPROXY_TLS_GLOBAL="  tune.ssl.cachesize 0"
		HAPROXY_TLS="  bind 127.0.0.1:${PORT[haproxy_tls]} ssl crt $CERTS/bundle.pem ssl-min-ver TLSv1.3 no-tls-tickets"
	fi
	cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn $HMAXCONN
${HAPROXY_TLS_GLOBAL:-}

defaults
  mode http
  maxconn $HMAXCONN
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h

frontend fe
  bind 127.0.0.1:${PORT[haproxy]}
${HAPROXY_TLS:-}
  default_backend be

backend be
  server echo $ECHO
EOF
	TARGETS+=(haproxy)
fi

if command -v caddy >/dev/null; then
	mkdir -p "$TMP/caddy"
	cat >"$TMP/caddy/Caddyfile" <<EOF
{
  admin off
  auto_https off
}
http://127.0.0.1:${PORT[caddy]} {
  bind 127.0.0.1
  reverse_proxy $ECHO
}
EOF
	if [ $TLS = 1 ]; then
		cat >>"$TMP/caddy/Caddyfile" <<EOF
https://127.0.0.1:${PORT[caddy_tls]} {
  bind 127.0.0.1
  tls $CERTS/cert.pem $CERTS/key.pem {
    protocols tls1.3
  }
  reverse_proxy $ECHO
}
EOF
	fi
	TARGETS+=(caddy)
fi

# launch NAME: start a target with the config written above
launch() {
	case $1 in
	wsproxy) start wsproxy "$TMP/wsproxy" -config "$TMP/wsproxy.yaml" ;; # GOMAXPROCS: the default, 2
	nginx) start nginx nginx -p "$TMP/nginx/" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" ;;
	haproxy) start haproxy haproxy -db -f "$TMP/haproxy.cfg" ;;
	caddy)
		start caddy env GOMAXPROCS=2 HOME="$TMP/caddy" XDG_DATA_HOME="$TMP/caddy" XDG_CONFIG_HOME="$TMP/caddy" \
			caddy run --config "$TMP/caddy/Caddyfile" --adapter caddyfile
		;;
	esac
}
for t in "${TARGETS[@]}"; do launch "$t"; done
TARGETS+=(direct)

ready direct || {
	log "the echo backend did not start"
	exit 1
}
UP=()
for t in "${TARGETS[@]}"; do
	[ "$t" = direct ] && continue
	ready "$t" || true
	if [ -n "${OK[$t:${TRANSPORTS[0]}]:-}${OK[$t:${TRANSPORTS[-1]}]:-}" ]; then
		UP+=("$t")
	else
		log "$t is skipped"
	fi
done
TARGETS=("${UP[@]}" direct)
# what ready found at start decides which transports each target runs
declare -A RUNS=()
for k in "${!OK[@]}"; do RUNS[$k]=1; done
log "targets: ${TARGETS[*]}; rounds: $ROUNDS; results: $RESULTS"

# bench WORKLOAD TARGET ARGS...: one wsbench run over $TR, its line added
# to RESULTS
bench() {
	local w=$1 t=$2 p line limit=120
	shift 2
	if [ "$t" != direct ] && ! alive "$t"; then
		log "$t is not running: $w skipped"
		return 0
	fi
	p=$(pids "$t")
	[ "$w" = idle ] && limit=300
	# shellcheck disable=SC2046 # targs is a list of words
	if line=$(timeout -k 5 $limit "$TMP/wsbench" -url "$(url "$t" "$TR")" $(targs "$TR") -name "$t" \
		${p:+-pid "$p"} -backend-pid "${PID[echo]}" "$@" 2>>"$TMP/wsbench.log"); then
		:
	else
		log "$w through $t over $TR: wsbench exited with status $? (see the errors in the results)"
	fi
	line=$(printf '%s\n' "$line" | grep '^{' | tail -1 || true)
	if [ -z "$line" ]; then
		log "$w through $t over $TR: no result"
		return 0
	fi
	printf '{"transport":"%s","workload":"%s","round":%d,%s\n' "$TR" "$w" "$ROUND" "${line#\{}" >>"$RESULTS"
	log "$(printf '%-5s %-9s %-8s %s' "$TR" "$w" "$t" "$(summary "$line")")"
	if [ "$t" != direct ] && ! alive "$t"; then
		log "warning: $t exited during $w:"
		tail -5 "$TMP/$t.log" | sed 's/^/    /' >&2
	fi
}

# summary LINE: the figures of a JSON line worth a glance while it runs
summary() {
	local f
	for f in ops_per_sec mib_per_sec p99_us cpu_ms_per_op rss_kib rss_per_session_2s_bytes pings errors; do
		printf '%s ' "$(printf '%s' "$1" | grep -o "\"$f\":[^,}]*" | tr -d '"')"
	done
}

# run_workload WORKLOAD TARGET: one workload through one target, over $TR
run_workload() {
	local w=$1 t=$2
	case $w in
	rtt-100) bench "$w" "$t" -mode rtt -conns 100 -size 128 -warmup $WARM -duration $DUR ;;
	rtt-1000) bench "$w" "$t" -mode rtt -conns 1000 -size 128 -warmup $WARM -duration $DUR ;;
	tput-1MiB) bench "$w" "$t" -mode throughput -conns 16 -size 1048576 -warmup $WARM -duration $DUR ;;
	sessions) bench "$w" "$t" -mode sessions -conns 50 -warmup $WARM -duration $DUR ;;
	idle)
		[ "$t" = direct ] && return 0
		# a fresh proxy for a clean baseline, and another after
		restart "$t" || log "$t did not restart"
		bench "$w" "$t" -mode idle -conns "$IDLE" -hold $HOLD
		restart "$t" || log "$t did not restart"
		;;
	esac
}

WORKLOADS=(rtt-100 rtt-1000 tput-1MiB sessions idle)
START=$SECONDS
for ((ROUND = 0; ROUND < ROUNDS; ROUND++)); do
	n=${#TARGETS[@]}
	k=$((ROUND % n))
	order=("${TARGETS[@]:k}" "${TARGETS[@]:0:k}")
	log "round $((ROUND + 1))/$ROUNDS: ${order[*]}"
	for TR in "${TRANSPORTS[@]}"; do
		for w in "${WORKLOADS[@]}"; do
			for t in "${order[@]}"; do
				if [ $((SECONDS - START)) -gt $BUDGET ]; then
					log "time budget of ${BUDGET}s spent: stopping"
					break 4
				fi
				[ -n "${RUNS[$t:$TR]:-}" ] || continue
				run_workload "$w" "$t"
				sleep 0.5
			done
		done
	done
done
log "runs took $((SECONDS - START))s"

if grep -q . "$TMP/wsbench.log" 2>/dev/null; then
	cp "$TMP/wsbench.log" "${RESULTS%.jsonl}.log"
fi
for t in "${TARGETS[@]}"; do
	[ "$t" = direct ] && continue
	alive "$t" || log "warning: $t is not running at the end"
	if [ -s "$TMP/$t.log" ]; then cp "$TMP/$t.log" "${RESULTS%.jsonl}.$t.log"; fi
done
"$TMP/report" "$RESULTS" | tee "${RESULTS%.jsonl}.md"
log "results: $RESULTS (table: ${RESULTS%.jsonl}.md)"
