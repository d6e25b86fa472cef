#!/usr/bin/env bash
# p99 latency during a reload storm vs without, side by side in one run.
#
# The proxy (release build, 1 worker) is pinned to core 0; h2load, the reload loop and the nginx
# upstream share core 1. Each round runs two constant-rate h2load passes back to back: one without
# reloads ("base") and one while a loop PUTs a new route table every RELOAD_EVERY seconds,
# alternating a plain route and a weighted split ("storm"). Per-request latencies come from
# h2load's --log-file; the script prints p50/p90/p99/p99.9/max per pass, the achieved rate, the
# reloads done, and per round the storm/base p99 ratio, then the median ratio.
#
# h2load --rps is open loop per connection; with CONNS connections at RATE/CONNS req/s each and
# sub-millisecond latencies a connection is never busy when its next request is due, so the lack
# of coordinated-omission correction does not bias these numbers.
#
# Usage: scripts/bench-reload.sh [ROUNDS]     env: RATE (2000) CONNS (20) DURATION (20 s)
#        RELOAD_EVERY (0.2) IO (uring) NICE (0; e.g. -10 as root, so that other work on a shared
#        machine interferes less: proxy, h2load, nginx and the reload loop all get it)
#        POKE (0; 1 adds a pass per round that sends GET /ready at the reload pace: the driver's
#        and the admin API's own cost, without reloads)
# Needs: h2load (nghttp2-client), nginx, curl, python3, taskset. Do not run while something else
# compiles on this machine; the script prints the load average before and after so that noise shows.
set -euo pipefail

ROUNDS=${1:-3}
RATE=${RATE:-2000}
CONNS=${CONNS:-20}
SECONDS_PER_PASS=${DURATION:-20}
RELOAD_EVERY=${RELOAD_EVERY:-0.2}
IO=${IO:-uring}
NICE=${NICE:-0}
TOKEN=bench-token
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/ringmesh-bench-reload.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "building the release binary..."
cargo build --release -q -p dataplane --bin ringmesh --manifest-path "$ROOT/Cargo.toml"
RINGMESH="$ROOT/target/release/ringmesh"

A_PORT=$(free_port); B_PORT=$(free_port); WEB_PORT=$(free_port); ADMIN_PORT=$(free_port)

# Upstream: nginx answering directly, two servers ("a" and "b"), on core 1.
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$A_PORT; location / { return 200 "a"; } }
    server { listen 127.0.0.1:$B_PORT; location / { return 200 "b"; } }
}
NGINX
nice -n "$NICE" taskset -c 1 nginx -c "$WORK/nginx.conf" -p "$WORK" &
PIDS+=($!)

config() { # $1: the route's action
    cat <<TOML
[admin]
address = "127.0.0.1:$ADMIN_PORT"
token = "$TOKEN"

[runtime]
workers = 1
pin_workers = false

[[listeners]]
name = "web"
address = "127.0.0.1:$WEB_PORT"
protocol = "http"

[[clusters]]
name = "a"
endpoints = ["127.0.0.1:$A_PORT"]

[[clusters]]
name = "b"
endpoints = ["127.0.0.1:$B_PORT"]

[[virtual_hosts]]
name = "default"
domains = ["*"]

[[virtual_hosts.routes]]
match.path_prefix = "/"
$1
TOML
}
config 'cluster = "a"' > "$WORK/plain.toml"
config 'weighted_clusters = [{ cluster = "a", weight = 20 }, { cluster = "b", weight = 80 }]' > "$WORK/split.toml"

nice -n "$NICE" taskset -c 0 "$RINGMESH" --config "$WORK/plain.toml" --io "$IO" --log-level warn > "$WORK/ringmesh.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ADMIN_PORT/ready" > /dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$ADMIN_PORT/ready" > /dev/null || { cat "$WORK/ringmesh.log"; exit 1; }

pass() { # $1: name; runs h2load, writes $WORK/$1.log and $WORK/$1.out
    rm -f "$WORK/$1.log" # h2load appends to an existing log file
    nice -n "$NICE" taskset -c 1 h2load --h1 -c "$CONNS" -t 1 --rps $((RATE / CONNS)) -D "$SECONDS_PER_PASS" \
        --log-file "$WORK/$1.log" "http://127.0.0.1:$WEB_PORT/" > "$WORK/$1.out" 2>&1
}

storm() { # $1: reload|poke; until $WORK/stop exists; writes the count to $WORK/reloads
    # One long-lived Python process rather than a curl per reload: the driver shares core 1 with
    # h2load and nginx, and must cost them as little as possible. "poke" sends GET /ready at the
    # same pace instead: the same driver and admin traffic without a reload, to tell their cost
    # from the reload's.
    nice -n "$NICE" taskset -c 1 python3 - "$ADMIN_PORT" "$TOKEN" "$RELOAD_EVERY" "$WORK" "$1" <<'PY'
import os, socket, sys, time
port, token, every, work, mode = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
bodies = [open(os.path.join(work, f), "rb").read() for f in ("split.toml", "plain.toml")]
n, start = 0, time.monotonic()
times = open(os.path.join(work, "reload-times"), "w")
while not os.path.exists(os.path.join(work, "stop")):
    body = bodies[n % 2]
    sent = time.time()
    with socket.create_connection(("127.0.0.1", port)) as s:
        if mode == "poke":
            s.sendall(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        else:
            s.sendall(b"PUT /config HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\n"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (token.encode(), len(body), body))
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    if not answer.startswith(b"HTTP/1.1 200"):
        sys.exit(f"reload {n} failed: {answer[:200]!r}")
    times.write(f"{sent} {time.time()}\n")
    n += 1
    time.sleep(max(0.0, start + n * every - time.monotonic()))
open(os.path.join(work, "reloads"), "w").write(str(n))
PY
}

report() { # $1: name -> "p50 p90 p99 p999 max rate failed" (ms, req/s)
    python3 - "$WORK/$1.log" "$WORK/$1.out" <<'PY'
import sys
lat = sorted(int(line.split()[2]) for line in open(sys.argv[1]) if line.strip())
out = open(sys.argv[2]).read()
rate = next(l.split(",")[1].split()[0] for l in out.splitlines() if l.startswith("finished in"))
req = next(l for l in out.splitlines() if l.startswith("requests:"))
failed = sum(int(p.split()[0]) for p in req.split(",") if p.split()[1] in ("failed", "errored", "timeout"))
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1000
print(f"{q(0.5):.3f} {q(0.9):.3f} {q(0.99):.3f} {q(0.999):.3f} {lat[-1]/1000:.3f} {rate} {failed}")
PY
}

near_reloads() { # storm pass: p99 of requests in flight during a reload (or 10 ms after) vs the rest
    python3 - "$WORK/storm.log" "$WORK/reload-times" <<'PY'
import bisect, sys
windows = sorted((float(a) * 1e6, float(b) * 1e6 + 10_000) for a, b in (l.split() for l in open(sys.argv[2]) if l.strip()))
starts = [w[0] for w in windows]
near, far = [], []
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    start, _, duration = line.split()[:3]
    start, duration = int(start), int(duration)
    i = bisect.bisect_right(starts, start + duration) - 1
    (near if i >= 0 and windows[i][1] >= start else far).append(duration)
q = lambda xs: sorted(xs)[min(len(xs) - 1, int(0.99 * len(xs)))] / 1000 if xs else float("nan")
total = len(near) + len(far)
print(f"         requests overlapping a reload (+10 ms): {len(near)} ({100 * len(near) / max(total, 1):.1f} %), p99 {q(near):.3f} ms; the others: p99 {q(far):.3f} ms")
PY
}

echo "ringmesh $(git -C "$ROOT" rev-parse --short HEAD), $(nproc) cores, $(uname -r), io=$IO, 1 worker on core 0, nice $NICE;"
echo "h2load + nginx + reload loop on core 1; $RATE req/s over $CONNS connections, ${SECONDS_PER_PASS}s per pass, reload every ${RELOAD_EVERY}s"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %-6s %8s %8s %8s %8s %8s %9s %7s %8s\n' round pass p50_ms p90_ms p99_ms p999_ms max_ms rate failed reloads
RATIOS=()
for round in $(seq "$ROUNDS"); do
    pass base
    read -r b50 b90 b99 b999 bmax brate bfail < <(report base)
    printf '%-8s %-6s %8s %8s %8s %8s %8s %9s %7s %8s\n' "$round" base "$b50" "$b90" "$b99" "$b999" "$bmax" "$brate" "$bfail" 0
    if [ "${POKE:-0}" = 1 ]; then
        rm -f "$WORK/stop"
        storm poke & STORM=$!
        pass poke
        touch "$WORK/stop"; wait "$STORM"
        read -r p50 p90 p99 p999 pmax prate pfail < <(report poke)
        printf '%-8s %-6s %8s %8s %8s %8s %8s %9s %7s %8s\n' "$round" poke "$p50" "$p90" "$p99" "$p999" "$pmax" "$prate" "$pfail" 0
    fi
    rm -f "$WORK/stop"
    storm reload & STORM=$!
    pass storm
    touch "$WORK/stop"; wait "$STORM"
    read -r s50 s90 s99 s999 smax srate sfail < <(report storm)
    printf '%-8s %-6s %8s %8s %8s %8s %8s %9s %7s %8s\n' "$round" storm "$s50" "$s90" "$s99" "$s999" "$smax" "$srate" "$sfail" "$(cat "$WORK/reloads")"
    near_reloads
    RATIOS+=("$(python3 -c "print(f'{$s99 / $b99:.3f}')")")
done
echo "p99 storm/base per round: ${RATIOS[*]}"
echo "median p99 ratio: $(printf '%s\n' "${RATIOS[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
echo "config generation at the end: $(curl -s "http://127.0.0.1:$ADMIN_PORT/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
