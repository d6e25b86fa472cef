#!/usr/bin/env bash
# Pod-to-pod through two ringmesh nodes (HBONE) against a direct veth path and a stunnel4 pair,
# on the node-mode test bed (deploy/testbed/testbed.sh). By hand, on a quiet machine, as root:
#
#   perf/scripts/hbone-bench.sh [--bin target/release/ringmesh] [--bytes 2G] [--dir /tmp/rmtb-bench]
#
# For each path: iperf3 from pod a1 to pod b1 with 1 and with 4 streams (--bytes each run),
# throughput as iperf3 reports it (receiver side), and the CPU seconds the proxies of both nodes
# spent (utime + stime from /proc, before and after) per GB moved; then new connections per second
# with `h2load --h1` and `Connection: close` against nginx in b1. The direct path has no proxy
# (its CPU column is empty). Everything runs on this machine's cores together (the proxies, iperf3
# and the kernel's forwarding): the ratios between paths are the result, not the absolute numbers.
set -Eeuo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$repo/target/release/ringmesh"
bytes=2G
dir=/tmp/rmtb-bench
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin="$2"; shift 2 ;;
        --bytes) bytes="$2"; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        *) echo "hbone-bench: unknown argument $1" >&2; exit 2 ;;
    esac
done
testbed="$repo/deploy/testbed/testbed.sh"
b1=10.2.0.11
stunnel_port=15443
log() { echo "hbone-bench: $*" >&2; }

cleanup() {
    pkill -f "iperf3 -s -B $b1" 2>/dev/null || true
    pkill -f "$dir/stunnel-" 2>/dev/null || true
    pkill -f "$dir/nginx.conf" 2>/dev/null || true
    "$testbed" down --dir "$dir" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# CPU seconds (utime + stime) of the given pids.
cpu_seconds() {
    local total=0 pid ticks
    for pid in "$@"; do
        ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        total=$((total + ticks))
    done
    awk -v t="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }'
}

servers_up() {
    ip netns exec rmtb-b1 iperf3 -s -B "$b1" -D --logfile "$dir/iperf3-server.log"
    mkdir -p "$dir/nginx"
    cat >"$dir/nginx.conf" <<EOF
daemon on; pid $dir/nginx/nginx.pid; error_log $dir/nginx/error.log; worker_processes 1;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $dir/nginx; proxy_temp_path $dir/nginx;
  fastcgi_temp_path $dir/nginx; uwsgi_temp_path $dir/nginx; scgi_temp_path $dir/nginx;
  server { listen $b1:8080; location / { return 200 "ok\n"; } } }
EOF
    ip netns exec rmtb-b1 nginx -c "$dir/nginx.conf"
    sleep 1
}

# One path: iperf3 ×2 and h2load; prints a Markdown row per measurement. "$@": proxy pids.
measure() {
    local name="$1" target="$2"
    shift 2
    local streams before after gbps cpu rate
    for streams in 1 4; do
        before=$( [ $# -gt 0 ] && cpu_seconds "$@" || echo 0)
        gbps=$(ip netns exec rmtb-a1 iperf3 -c "$target" -p "${PORT:-5201}" -n "$bytes" -P "$streams" -J \
            | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))')
        after=$( [ $# -gt 0 ] && cpu_seconds "$@" || echo 0)
        cpu=$(awk -v a="$after" -v b="$before" -v n="$bytes" 'BEGIN {
            s = n; m = 1; if (s ~ /G$/) m = 1; else if (s ~ /M$/) m = 1/1024; sub(/[GM]$/, "", s);
            gb = s * m * 1.073741824; printf "%.2f", (a - b) / gb }')
        [ $# -gt 0 ] || cpu="-"
        echo "| $name | iperf3 -P $streams | $gbps Gbit/s | $cpu |"
    done
    rate=$(ip netns exec rmtb-a1 h2load --h1 -n 4000 -c 8 -H 'Connection: close' "http://$target:${HTTP_PORT:-8080}/" \
        | awk '/^finished in/ { gsub(",", "", $4); print $4 }')
    echo "| $name | h2load --h1, Connection: close | $rate req/s (one connection each) | - |"
}

echo "| path | load | result | CPU s per GB (both nodes' proxies) |"
echo "|---|---|---|---|"

# 1. Direct: the topology without capture.
"$testbed" up --dir "$dir" --no-ringmesh >/dev/null
servers_up
measure direct "$b1"
cleanup

# 2. stunnel4 pair: a1 → stunnel (node a, client mode) → TLS over link0 → stunnel (node b) → b1.
"$testbed" up --dir "$dir" --no-ringmesh >/dev/null
servers_up
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=stunnel \
    -keyout "$dir/stunnel-key.pem" -out "$dir/stunnel-cert.pem" 2>/dev/null
cat >"$dir/stunnel-b.conf" <<EOF
foreground = no
pid = $dir/stunnel-b.pid
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
TIMEOUTclose = 0
[iperf]
accept = 10.255.0.2:$stunnel_port
connect = $b1:5201
cert = $dir/stunnel-cert.pem
key = $dir/stunnel-key.pem
[http]
accept = 10.255.0.2:$((stunnel_port + 1))
connect = $b1:8080
cert = $dir/stunnel-cert.pem
key = $dir/stunnel-key.pem
EOF
cat >"$dir/stunnel-a.conf" <<EOF
foreground = no
pid = $dir/stunnel-a.pid
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
TIMEOUTclose = 0
client = yes
[iperf]
accept = 10.1.0.1:5201
connect = 10.255.0.2:$stunnel_port
[http]
accept = 10.1.0.1:8080
connect = 10.255.0.2:$((stunnel_port + 1))
EOF
ip netns exec rmtb-node-b stunnel4 "$dir/stunnel-b.conf"
ip netns exec rmtb-node-a stunnel4 "$dir/stunnel-a.conf"
sleep 1
measure stunnel4 10.1.0.1 "$(cat "$dir/stunnel-a.pid")" "$(cat "$dir/stunnel-b.pid")"
cleanup

# 3. ringmesh on both nodes: a1's connection to b1 is captured and tunnelled.
"$testbed" up --dir "$dir" --bin "$bin" >/dev/null
servers_up
measure "ringmesh HBONE" "$b1" "$(cat "$dir/node-a.pid")" "$(cat "$dir/node-b.pid")"
log "done; ringmesh $("$bin" --version 2>/dev/null || echo "$bin"), commit $(git -C "$repo" rev-parse --short HEAD)"
