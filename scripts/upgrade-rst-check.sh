#!/usr/bin/env bash
# Counts TCP resets on the wire during the binary-upgrade tests.
#
# The upgrade tests already count refused and reset connections from the clients' side; this runs
# the same tests inside a fresh network namespace whose only traffic is theirs, with an nftables
# counter on every TCP segment carrying RST, so that a reset nobody noticed (say, one sent to a
# client that had already given up) would still show. Prints the counters and exits 1 if any RST
# was sent. Needs root (ip netns, nft) and the binaries (`cargo build --bins`).
#
# Usage: scripts/upgrade-rst-check.sh [TEST-FILTER]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NS=ringmesh-rst-$$
FILTER=${1:-}

cleanup() { ip netns del "$NS" 2>/dev/null || true; }
trap cleanup EXIT

TEST_BIN=$(cd "$ROOT" && cargo test -p tests --test upgrade --no-run 2>&1 \
    | grep -o 'target/[^ )]*/deps/upgrade-[0-9a-f]*' | head -1)
TEST_BIN="$ROOT/$TEST_BIN"
[ -x "$TEST_BIN" ] || { echo "cannot find the upgrade test binary" >&2; exit 2; }

ip netns add "$NS"
ip -n "$NS" link set lo up
ip netns exec "$NS" nft -f - <<'NFT'
table inet rstcheck {
    counter rst_sent {}
    counter syn_sent {}
    chain out {
        type filter hook output priority 0; policy accept;
        tcp flags & rst == rst counter name rst_sent
        tcp flags & (syn | ack) == syn counter name syn_sent
    }
}
NFT

echo "running the upgrade tests ${FILTER:+($FILTER) }in network namespace $NS..."
ip netns exec "$NS" "$TEST_BIN" --test-threads 1 --nocapture $FILTER 2>&1 | grep -E "^test |test result|keep-alive:|new connections:"
RST=$(ip netns exec "$NS" nft list counter inet rstcheck rst_sent | grep -o 'packets [0-9]*' | cut -d' ' -f2)
SYN=$(ip netns exec "$NS" nft list counter inet rstcheck syn_sent | grep -o 'packets [0-9]*' | cut -d' ' -f2)
echo "connections opened (SYN): $SYN; TCP segments with RST: $RST"
[ "$RST" = 0 ]
