#!/usr/bin/env bash
# gRPC unary latency: direct vs ringmesh vs nginx (grpc_pass) vs HAProxy (h2 both sides), one run.
#
# The upstream is the Python grpcio Echo server of the tests (tests/python/grpc_echo.py); the
# client is h2load sending real gRPC unary calls (POST /ringmesh.test.Echo/Unary, a 100-byte
# message in gRPC framing, `content-type: application/grpc`, `te: trailers`) at a constant rate.
# Before measuring, one grpcio client call through each target checks that it answers gRPC
# status OK, since h2load only sees the HTTP status. Per-request latencies come from h2load's
# --log-file. Each proxy runs one worker pinned to core 0; h2load and the server share core 1.
# Targets alternate within each round; the script prints p50/p90/p99/p99.9/max per target and
# round, then the median over rounds and the added p50/p99 against direct.
#
# Usage: scripts/bench-grpc.sh [ROUNDS]    env: RATE (1000 calls/s) CONNS (4) DURATION (10 s)
#        PYTHON (a python3 with grpcio and grpcio-tools; default $RINGMESH_PYTHON or .venv)
# Needs: h2load (nghttp2-client), nginx, haproxy, taskset, the release binary (built here).
# Do not run while something else compiles on this machine.
set -euo pipefail

ROUNDS=${1:-3}
RATE=${RATE:-1000}
CONNS=${CONNS:-4}
SECONDS_PER_PASS=${DURATION:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-${RINGMESH_PYTHON:-$ROOT/.venv/bin/python3}}
WORK=$(mktemp -d /tmp/ringmesh-bench-grpc.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # $1: port
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}

echo "building the release binary..."
cargo build --release -q -p dataplane --bin ringmesh --manifest-path "$ROOT/Cargo.toml"
RINGMESH="$ROOT/target/release/ringmesh"

# The gRPC server, on core 1.
mkfifo "$WORK/server.out"
taskset -c 1 "$PYTHON" "$ROOT/tests/python/grpc_echo.py" server > "$WORK/server.out" &
PIDS+=($!)
exec 3< "$WORK/server.out"
read -r _ SERVER_PORT <&3
cat <&3 > /dev/null & # keep draining its event lines

RM_PORT=$(free_port); RM_ADMIN=$(free_port); NGINX_PORT=$(free_port); HAPROXY_PORT=$(free_port)

cat > "$WORK/ringmesh.toml" <<TOML
[admin]
address = "127.0.0.1:$RM_ADMIN"

[runtime]
workers = 1

[[listeners]]
name = "grpc"
address = "127.0.0.1:$RM_PORT"
protocol = "http"

[[virtual_hosts]]
name = "all"
domains = ["*"]

[[virtual_hosts.routes]]
match.path_prefix = "/"
cluster = "echo"

[[clusters]]
name = "echo"
endpoints = ["127.0.0.1:$SERVER_PORT"]
protocol = "h2"
TOML
taskset -c 0 "$RINGMESH" --config "$WORK/ringmesh.toml" --log-level warn > "$WORK/ringmesh.log" 2>&1 &
PIDS+=($!)

cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;   # else nginx closes each client connection after 1000 calls
    upstream echo { server 127.0.0.1:$SERVER_PORT; keepalive 1024; }
    server {
        listen 127.0.0.1:$NGINX_PORT http2;
        location / { grpc_pass grpc://echo; }
    }
}
NGINX
taskset -c 0 nginx -c "$WORK/nginx.conf" -p "$WORK" > "$WORK/nginx.log" 2>&1 &
PIDS+=($!)

cat > "$WORK/haproxy.cfg" <<HAPROXY
global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend grpc
    bind 127.0.0.1:$HAPROXY_PORT proto h2
    default_backend echo
backend echo
    server echo 127.0.0.1:$SERVER_PORT proto h2
HAPROXY
taskset -c 0 haproxy -f "$WORK/haproxy.cfg" -db > "$WORK/haproxy.log" 2>&1 &
PIDS+=($!)

declare -A PORT=([direct]=$SERVER_PORT [ringmesh]=$RM_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT)
TARGETS=(direct ringmesh nginx haproxy)
for t in "${TARGETS[@]}"; do
    wait_port "${PORT[$t]}"
    answer=$("$PYTHON" "$ROOT/tests/python/grpc_echo.py" client "${PORT[$t]}" unary --size 100)
    case "$answer" in
        *'"code": "OK"'*'"payload_match": true'*) ;;
        *) echo "$t does not answer gRPC: $answer" >&2; exit 1 ;;
    esac
done

# One unary request: Msg { seq: 1, payload: 100 bytes } in gRPC framing.
python3 - "$WORK/request.bin" <<'PY'
import struct, sys
message = b"\x08\x01" + b"\x12\x64" + b"x" * 100
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(message)) + message)
PY

pass() { # $1: target, $2: round
    local log="$WORK/$1-$2.log"
    rm -f "$log"
    taskset -c 1 h2load -c "$CONNS" -m 1 -t 1 --rps $((RATE / CONNS)) -D "$SECONDS_PER_PASS" \
        -d "$WORK/request.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        --log-file "$log" "http://127.0.0.1:${PORT[$1]}/ringmesh.test.Echo/Unary" > "$WORK/$1-$2.out" 2>&1
    python3 - "$log" "$WORK/$1-$2.out" <<'PY'
import sys
lat = sorted(int(line.split()[2]) for line in open(sys.argv[1]) if line.strip())
out = open(sys.argv[2]).read()
rate = next(l.split(",")[1].split()[0] for l in out.splitlines() if l.startswith("finished in"))
req = next(l for l in out.splitlines() if l.startswith("requests:"))
status = next(l for l in out.splitlines() if l.startswith("status codes:"))
failed = sum(int(p.split()[0]) for p in req.split(",") if p.split()[1] in ("failed", "errored", "timeout"))
non2xx = sum(int(p.split()[0]) for p in status.split(":")[1].split(",") if not p.split()[1].startswith("2"))
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(q(0.5), q(0.9), q(0.99), q(0.999), lat[-1], rate, failed + non2xx)
PY
}

echo "ringmesh $(git -C "$ROOT" rev-parse --short HEAD), $(nproc) cores, $(uname -r); proxies: 1 worker on core 0;"
echo "h2load + grpcio server on core 1; $RATE unary calls/s over $CONNS connections, ${SECONDS_PER_PASS}s per pass"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-9s %8s %8s %8s %8s %8s %9s %7s\n' round target p50_us p90_us p99_us p999_us max_us rate failed
for round in $(seq "$ROUNDS"); do
    # Rotate the order each round, so that no target always runs first.
    for i in "${!TARGETS[@]}"; do
        t=${TARGETS[$(((i + round - 1) % ${#TARGETS[@]}))]}
        read -r p50 p90 p99 p999 max rate failed < <(pass "$t" "$round")
        printf '%-6s %-9s %8s %8s %8s %8s %8s %9s %7s\n' "$round" "$t" "$p50" "$p90" "$p99" "$p999" "$max" "$rate" "$failed"
        echo "$t $p50 $p99" >> "$WORK/summary"
    done
done
python3 - "$WORK/summary" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    t, p50, p99 = line.split()
    rows.setdefault(t, []).append((int(p50), int(p99)))
med = {t: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for t, v in rows.items()}
print("median over rounds (µs): target p50 p99 added_p50 added_p99")
for t in ("direct", "ringmesh", "nginx", "haproxy"):
    p50, p99 = med[t]
    print(f"  {t:9} {p50:8.0f} {p99:8.0f} {p50 - med['direct'][0]:9.0f} {p99 - med['direct'][1]:9.0f}")
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
