#!/usr/bin/env bash
# Hold many idle WebSocket sessions across several wsproxy processes that
# share one port with reuse_port, and report memory per session (each
# proxy's RSS and Go heap, the kernel's slab and TCP buffers) and the
# proxies' CPU per second of pings.
#
#   bench/scale.sh [-sessions 36000] [-proxies 4] [-backends 4] [-clients 4]
#                  [-sources 16] [-ping 5s] [-window 20s] [-timeout 5m]
#
# Everything runs on loopback: echo backends, the proxies on one shared
# port, and wsbench clients in idle mode from addresses of their own in
# 127.0.0.0/8. It builds the binaries into a temporary directory, stops by
# itself after -timeout, and kills every process it started however it
# ends. Too heavy for CI: about a minute and 2 GB of memory at 36,000.
# Raw figures as a JSON line at the end; docs/scaling.md reads them.
set -euo pipefail
case ${1:-} in
-h | -help | --help)
	sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit 0
	;;
esac
cd "$(dirname "$0")/.."
BIN=$(mktemp -d)
trap 'rm -rf "$BIN"' EXIT
go build -o "$BIN/wsproxy" ./cmd/wsproxy
go build -o "$BIN/echo" ./bench/echo
go build -o "$BIN/wsbench" ./bench/wsbench
go build -o "$BIN/scale" ./bench/scale
"$BIN/scale" -bin "$BIN" "$@"
