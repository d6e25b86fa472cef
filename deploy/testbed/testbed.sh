#!/usr/bin/env bash
# ringmesh node-mode test bed: two "nodes" and two "pods" per node as network namespaces, one
# ringmesh per node with its capture rules, HBONE between the nodes. See deploy/README.md
# ("Test bed") for the topology and how to use it.
#
#   deploy/testbed/testbed.sh up     [--dir DIR] [--bin RINGMESH] [--capture redirect|tproxy] [--no-ringmesh]
#   deploy/testbed/testbed.sh status [--dir DIR]
#   deploy/testbed/testbed.sh down   [--dir DIR]
#
# DIR (default /tmp/rmtb) holds the certificates, the node configs, ringmesh's logs and pids.
# `up` stops at the first failure and then takes everything down again; `down` works whatever
# state `up` left (it is what `up` runs on failure). `--no-ringmesh` builds the namespaces, the
# certificates and the configs only: the direct pod-to-pod path, without capture.
# Needs root, iproute2, nftables, openssl.
set -Eeuo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
command="${1:-}"
[ $# -gt 0 ] && shift
dir=/tmp/rmtb
bin="${RINGMESH:-}"
capture=redirect
with_ringmesh=true
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --capture) capture="$2"; shift 2 ;;
        --no-ringmesh) with_ringmesh=false; shift ;;
        *) echo "testbed: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$bin" ]; then
    # The newer of the release and debug builds.
    bin="$repo/target/debug/ringmesh"
    release="$repo/target/release/ringmesh"
    if [ -x "$release" ] && { [ ! -x "$bin" ] || [ "$release" -nt "$bin" ]; }; then
        bin="$release"
    fi
fi

# Topology (the same as tests/src/netns.rs): node i has bridge br0 = 10.<i>.0.1/24 and routes
# for 10.<i>.0.0/24; its pods have 10.<i>.0.11 and .12 as /32 with a default route through the
# bridge address; the nodes are joined by link0 (10.255.0.1 and .2).
nodes=(a b)
declare -A node_octet=([a]=1 [b]=2)
pods=(a1 a2 b1 b2)
declare -A pod_node=([a1]=a [a2]=a [b1]=b [b2]=b)
declare -A pod_address=([a1]=10.1.0.11 [a2]=10.1.0.12 [b1]=10.2.0.11 [b2]=10.2.0.12)
# Service accounts: the x1 pods are clients, the x2 pods serve (and back the service VIP).
declare -A pod_sa=([a1]=client [a2]=server [b1]=client [b2]=server)
k8s_namespace=demo
service_vip=10.96.0.10
hbone_port=15008

node_ns() { echo "rmtb-node-$1"; }
pod_ns() { echo "rmtb-$1"; }
all_ns() {
    local n p
    for p in "${pods[@]}"; do pod_ns "$p"; done
    for n in "${nodes[@]}"; do node_ns "$n"; done
}
log() { echo "testbed: $*" >&2; }

down() {
    local n ns pid pids
    for n in "${nodes[@]}"; do
        if [ -f "$dir/node-$n.pid" ]; then
            pid="$(cat "$dir/node-$n.pid")"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$dir/node-$n.pid"
        fi
    done
    for ns in $(all_ns); do
        if ip netns list | grep -qx "$ns\( (id: [0-9]*)\)\?"; then
            pids="$(ip netns pids "$ns" 2>/dev/null || true)"
            [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
    log "down: no rmtb- namespace left; logs and certificates stay in $dir"
}

make_topology() {
    local n p o ns node
    for n in "${nodes[@]}"; do
        ns="$(node_ns "$n")"; o="${node_octet[$n]}"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
            net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.all.send_redirects=0
        # Pods are routed, not bridged: with br_netfilter, TPROXY would see bridged packets.
        ip netns exec "$ns" sysctl -qwe net.bridge.bridge-nf-call-iptables=0 \
            net.bridge.bridge-nf-call-ip6tables=0
        ip -n "$ns" link add br0 type bridge
        ip -n "$ns" addr add "10.$o.0.1/24" dev br0
        ip -n "$ns" link set br0 up
    done
    for p in "${pods[@]}"; do
        ns="$(pod_ns "$p")"; node="$(node_ns "${pod_node[$p]}")"; o="${node_octet[${pod_node[$p]}]}"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$node" link add "vp-$p" type veth peer name eth0 netns "$ns"
        ip -n "$node" link set "vp-$p" master br0
        ip -n "$node" link set "vp-$p" up
        ip -n "$ns" addr add "${pod_address[$p]}/32" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" route add "10.$o.0.1" dev eth0 scope link
        ip -n "$ns" route add default via "10.$o.0.1" dev eth0
    done
    ip -n "$(node_ns a)" link add link0 type veth peer name link0 netns "$(node_ns b)"
    ip -n "$(node_ns a)" addr add 10.255.0.1/24 dev link0
    ip -n "$(node_ns b)" addr add 10.255.0.2/24 dev link0
    ip -n "$(node_ns a)" link set link0 up
    ip -n "$(node_ns b)" link set link0 up
    ip -n "$(node_ns a)" route add 10.2.0.0/24 via 10.255.0.2 dev link0
    ip -n "$(node_ns b)" route add 10.1.0.0/24 via 10.255.0.1 dev link0
}

# A CA and one SVID (ECDSA P-256, URI SAN spiffe://cluster.local/ns/<ns>/sa/<sa>) per service
# account, plus one for each node's own [identity].
make_certificates() {
    local pki="$dir/pki" name uri
    mkdir -p "$pki"
    openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca-key.pem" 2>/dev/null
    openssl req -x509 -new -key "$pki/ca-key.pem" -days 7 -subj "/CN=rmtb test bed CA" \
        -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$pki/ca.pem" 2>/dev/null
    for name in client server node; do
        if [ "$name" = node ]; then
            uri="spiffe://cluster.local/ns/ringmesh-system/sa/ringmesh"
        else
            uri="spiffe://cluster.local/ns/$k8s_namespace/sa/$name"
        fi
        openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name-key.pem" 2>/dev/null
        openssl req -new -key "$pki/$name-key.pem" -subj "/O=rmtb" -out "$pki/$name.csr" 2>/dev/null
        printf 'subjectAltName=URI:%s\nbasicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' \
            "$uri" >"$pki/$name.ext"
        openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca-key.pem" \
            -CAcreateserial -days 7 -extfile "$pki/$name.ext" -out "$pki/$name.pem" 2>/dev/null
    done
}

write_config() {
    local n="$1" p pki="$dir/pki" file="$dir/node-$n.toml"
    cat >"$file" <<EOF
# ringmesh node $n of the test bed (deploy/testbed/testbed.sh).
[admin]
address = "127.0.0.1:0"

[node]
name = "$n"
outbound = "0.0.0.0:15001"
inbound = "0.0.0.0:15006"
hbone = "0.0.0.0:$hbone_port"
capture = "$capture"
hbone_port = $hbone_port

[identity]
trust_domain = "cluster.local"
cert = "$pki/node.pem"
key = "$pki/node-key.pem"
ca_bundle = "$pki/ca.pem"

[[identity.service_accounts]]
namespace = "$k8s_namespace"
service_account = "client"
cert = "$pki/client.pem"
key = "$pki/client-key.pem"

[[identity.service_accounts]]
namespace = "$k8s_namespace"
service_account = "server"
cert = "$pki/server.pem"
key = "$pki/server-key.pem"

[[services]]
name = "server"
namespace = "$k8s_namespace"
addresses = ["$service_vip"]
ports = [{ port = 80, target_port = 8080 }]
workloads = ["a2", "b2"]
EOF
    for p in "${pods[@]}"; do
        cat >>"$file" <<EOF

[[workloads]]
name = "$p"
namespace = "$k8s_namespace"
addresses = ["${pod_address[$p]}"]
node = "${pod_node[$p]}"
service_account = "${pod_sa[$p]}"
app = "${pod_sa[$p]}"
EOF
    done
}

start_ringmesh() {
    local n="$1" ns address_file="$dir/node-$1.admin"
    ns="$(node_ns "$n")"
    if ! "$bin" validate "$dir/node-$n.toml" >"$dir/node-$n.validate" 2>&1; then
        log "ringmesh ($bin) rejects the config of node $n:"
        sed 's/^/    /' "$dir/node-$n.validate" >&2
        log "an older ringmesh build (node mode needs this one: --bin target/debug/ringmesh), or the"
        log "config is wrong. The topology alone: testbed.sh up --no-ringmesh"
        return 1
    fi
    ip netns exec "$ns" "$bin" node rules "$dir/node-$n.toml" --apply
    rm -f "$address_file"
    ip netns exec "$ns" "$bin" --config "$dir/node-$n.toml" --admin-address-path "$address_file" \
        >"$dir/node-$n.log" 2>&1 &
    echo $! >"$dir/node-$n.pid"
    for _ in $(seq 100); do
        [ -s "$address_file" ] && { log "node $n: ringmesh pid $(cat "$dir/node-$n.pid"), admin $(cat "$address_file")"; return 0; }
        kill -0 "$(cat "$dir/node-$n.pid")" 2>/dev/null || break
        sleep 0.1
    done
    log "node $n: ringmesh did not come up; its log ($dir/node-$n.log):"
    tail -n 20 "$dir/node-$n.log" | sed 's/^/    /' >&2
    return 1
}

up() {
    local n
    [ "$(id -u)" = 0 ] || { log "needs root (network namespaces)"; exit 1; }
    for tool in ip nft openssl; do
        command -v "$tool" >/dev/null || { log "missing: $tool"; exit 1; }
    done
    case "$capture" in redirect|tproxy) ;; *) log "--capture is redirect or tproxy"; exit 2 ;; esac
    if ip netns list | grep -q '^rmtb-'; then
        log "already up (ip netns list shows rmtb- namespaces): run down first"
        exit 1
    fi
    if $with_ringmesh && [ ! -x "$bin" ]; then
        log "no ringmesh binary at $bin: cargo build --release --bins, or --bin PATH"
        exit 1
    fi
    mkdir -p "$dir"
    trap 'log "up failed; taking everything down"; down' ERR
    make_topology
    make_certificates
    for n in "${nodes[@]}"; do write_config "$n"; done
    if $with_ringmesh; then
        for n in "${nodes[@]}"; do start_ringmesh "$n"; done
    fi
    trap - ERR
    log "up: namespaces $(all_ns | tr '\n' ' ')(configs, logs and pids in $dir)"
}

status() {
    local n ns pid
    log "namespaces:"
    ip netns list | grep '^rmtb-' | sed 's/^/    /' >&2 || log "    none"
    for n in "${nodes[@]}"; do
        ns="$(node_ns "$n")"
        ip netns list | grep -q "^$ns\b" || continue
        echo "== node $n ($ns)"
        if [ -f "$dir/node-$n.pid" ]; then
            pid="$(cat "$dir/node-$n.pid")"
            if kill -0 "$pid" 2>/dev/null; then
                echo "ringmesh: running, pid $pid, admin $(cat "$dir/node-$n.admin" 2>/dev/null || echo '?')"
            else
                echo "ringmesh: pid $pid is not running (log: $dir/node-$n.log)"
            fi
        else
            echo "ringmesh: not started"
        fi
        echo "listeners:"
        ip netns exec "$ns" ss -ltnH | sed 's/^/    /'
        echo "capture rules:"
        ip netns exec "$ns" nft list table inet ringmesh 2>/dev/null | sed 's/^/    /' || echo "    none"
        ip netns exec "$ns" ip rule | grep 'lookup 133' | sed 's/^/    /' || true
    done
}

case "$command" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
