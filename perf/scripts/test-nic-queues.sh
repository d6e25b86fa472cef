#!/usr/bin/env bash
# test-nic-queues.sh: checks nic-queues.sh against fake /sys and /proc trees, so that the driver
# naming patterns and the --apply writes are tested without the NICs (and without root on a real
# machine's interrupts). Each fixture copies what the kernel shows for one driver family.
#
#   bash perf/scripts/test-nic-queues.sh      # ends with "N passed, N failed"

set -u -o pipefail

script=$(cd "$(dirname "$0")" && pwd)/nic-queues.sh
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
export NICQ_SYSFS=$root/sys NICQ_PROCFS=$root/proc

passed=0 failed=0
check() { # description, command...
    local what=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        printf 'FAILED: %s\n' "$what"
    fi
}
file_is() { [[ $(head -n1 "$1") == "$2" ]] || { printf '  %s is "%s", expected "%s"\n' "$1" "$(head -n1 "$1")" "$2"; return 1; }; }
contains() { [[ $1 == *"$2"* ]] || { printf '  output lacks "%s":\n%s\n' "$2" "$1"; return 1; }; }
fails() { ! "$@" >/dev/null 2>&1; }
lacks() { [[ $1 != *"$2"* ]] || { printf '  output has "%s":\n%s\n' "$2" "$1"; return 1; }; }

# --- fixtures --------------------------------------------------------------------------------

mkdir -p "$root/sys/devices/system/cpu" "$root/sys/class/net" "$root/proc/irq" "$root/sys/bus/pci/drivers"
echo 0-3 >"$root/sys/devices/system/cpu/online"

# A network interface: name, queue count, device path under sys/devices ("" = software), driver.
add_if() {
    local queues=$2 device=$3 driver=$4 i dir=$root/sys/class/net/$1
    mkdir -p "$dir"
    for ((i = 0; i < queues; i++)); do
        mkdir -p "$dir/queues/rx-$i" "$dir/queues/tx-$i"
        echo 0 >"$dir/queues/rx-$i/rps_cpus"
        echo 0 >"$dir/queues/tx-$i/xps_cpus"
    done
    if [[ -n $device ]]; then
        mkdir -p "$root/sys/devices/$device" "$root/sys/bus/pci/drivers/$driver"
        ln -s "$root/sys/devices/$device" "$dir/device"
        ln -s "$root/sys/bus/pci/drivers/$driver" "$root/sys/devices/$device/driver"
    fi
}

# An IRQ: number, action name(s) as /proc/interrupts shows them, current affinity.
interrupts_lines=()
add_irq() {
    mkdir -p "$root/proc/irq/$1"
    echo "$3" >"$root/proc/irq/$1/smp_affinity_list"
    echo "${3%%[-,]*}" >"$root/proc/irq/$1/effective_affinity_list"
    interrupts_lines+=("$(printf '%4s: %10s %10s %10s %10s  IR-PCI-MSIX-0000:00:00.0  %s-edge      %s' "$1" 5 0 0 0 "$1" "$2")")
}

# ixgbe/i40e style: one combined IRQ per queue pair, named IF-TxRx-N.
add_if eth0 4 pci0000:00/0000:3b:00.0 ixgbe
for i in 0 1 2 3; do add_irq $((100 + i)) "eth0-TxRx-$i" 0-3; done
add_irq 99 eth0 0-3 # the link/misc vector carries the bare interface name

# i40e's driver prefix, and an unrelated interface whose name starts the same way.
add_if ens2 2 pci0000:00/0000:3c:00.0 i40e
add_irq 110 "i40e-ens2-TxRx-0" 0-3
add_irq 111 "i40e-ens2-TxRx-1" 0-3
add_irq 112 "i40e-ens20-TxRx-0" 0-3

# igb with separate RX and TX vectors, one of them on a shared line.
add_if eth1 2 pci0000:00/0000:3d:00.0 igb
add_irq 120 "eth1-rx-0" 0-3
add_irq 121 "eth1-rx-1" 0-3
add_irq 122 "eth1-tx-0" 0-3
add_irq 123 "other-dev, eth1-tx-1" 0-3

# virtio-net: IRQs carry the virtio device name; the MSI vectors belong to the PCI parent.
add_if eth2 2 pci0000:00/0000:00:04.0/virtio3 virtio_net
add_irq 130 virtio3-config 0-3
add_irq 131 virtio3-input.0 0-3
add_irq 132 virtio3-output.0 0-3
add_irq 133 virtio3-input.1 0-3
add_irq 134 virtio3-output.1 0-3

# mlx5: completion vectors named by PCI address; the async vector is not a queue.
add_if ens1f0 3 pci0000:00/0000:5e:00.0 mlx5_core
add_irq 140 "mlx5_async0@pci:0000:5e:00.0" 0-3
for i in 0 1 2; do add_irq $((141 + i)) "mlx5_comp$i@pci:0000:5e:00.0" 0-3; done

# An unknown driver: nothing matches by name, so the MSI vectors are taken in order.
add_if ens5 2 pci0000:00/0000:00:05.0 odd_nic
mkdir -p "$root/sys/devices/pci0000:00/0000:00:05.0/msi_irqs"
for irq in 150 151 152; do touch "$root/sys/devices/pci0000:00/0000:00:05.0/msi_irqs/$irq"; done
add_irq 150 odd-ctrl 0-3
add_irq 151 odd-q-a 0-3
add_irq 152 odd-q-b 0-3

# virtio-net with one vector shared by all virtqueues: found through the PCI parent's MSI vectors.
add_if eth3 1 pci0000:00/0000:00:06.0/virtio4 virtio_net
mkdir -p "$root/sys/devices/pci0000:00/0000:00:06.0/msi_irqs"
for irq in 160 161; do touch "$root/sys/devices/pci0000:00/0000:00:06.0/msi_irqs/$irq"; done
add_irq 160 virtio4-config 0-3
add_irq 161 virtio4-virtqueues 0-3

# Software interfaces: no device, no IRQs.
add_if veth0 2 "" ""
add_if lo 1 "" ""
echo 0 >"$root/sys/class/net/lo/queues/tx-0/xps_cpus"

{
    printf '            CPU0       CPU1       CPU2       CPU3\n'
    printf '%s\n' "${interrupts_lines[@]}"
    printf ' NMI:          0          0          0          0   Non-maskable interrupts\n'
} >"$root/proc/interrupts"
mkdir -p "$root/proc/1"
echo init >"$root/proc/1/comm"

# --- dry run ---------------------------------------------------------------------------------

out=$("$script" 2>&1)
check "dry run exits 0" test $? -eq 0
check "ixgbe queue 2 -> core 2" contains "$out" "rx-2   2     102   eth0-TxRx-2            0-3 -> 2"
check "combined IRQ also on its TX queue" contains "$out" "tx-3   3     103   eth0-TxRx-3"
check "bare interface name is not a queue" lacks "$out" "99    eth0 "
check "i40e prefix matched" contains "$out" "rx-1   1     111   i40e-ens2-TxRx-1"
check "ens20 not taken for ens2" lacks "$out" "112   i40e-ens20"
check "igb rx" contains "$out" "rx-1   1     121   eth1-rx-1"
check "igb tx on a shared line" contains "$out" "tx-1   1     123   other-dev,eth1-tx-1"
check "virtio input" contains "$out" "rx-1   1     133   virtio3-input.1"
check "virtio output" contains "$out" "tx-0   0     132   virtio3-output.0"
check "virtio config left alone" lacks "$out" "virtio3-config"
check "mlx5 comp vectors" contains "$out" "rx-2   2     143   mlx5_comp2@pci:0000:5e:00.0"
check "mlx5 async left alone" lacks "$out" "mlx5_async0"
check "MSI fallback said so" contains "$out" "IRQs matched to queues by MSI order"
check "MSI fallback skips ctrl" contains "$out" "rx-0   0     151   odd-q-a"
check "virtio shared vector via the PCI parent" contains "$out" "rx-0   0     161   virtio4-virtqueues"
check "software interfaces skipped by default" contains "$out" "skipped software interfaces (no interrupts; name one to see or set its RPS/XPS): lo veth0"
check "XPS proposal" contains "$out" "xps off -> 0"
check "dry run says so" contains "$out" "Dry run: nothing was changed"
check "dry run wrote nothing" file_is "$root/proc/irq/102/smp_affinity_list" 0-3
check "fewer queues than cores noted" contains "$out" "2 RX queue(s) for 4 worker cores: core(s) 2-3 have no RX queue"

# XPS wraps the extra worker cores onto the queues: 2 queues, 4 cores -> tx-0 {0,2}, tx-1 {1,3}.
out=$("$script" veth0 2>&1)
check "software interface shown when named" contains "$out" "veth0: software device, 2 RX / 2 TX queues"
check "xps wraps cores" contains "$out" "echo 00000005"
check "xps wraps cores (tx-1)" contains "$out" "echo 0000000a"

# Worker cores given out of order keep their order.
out=$("$script" --cores 3,1 eth0 2>&1)
check "--cores order kept" contains "$out" "worker cores 3,1"
check "queue 0 -> first listed core" contains "$out" "rx-0   3     100"
check "queue 2 wraps to first listed core" contains "$out" "rx-2   3     102"

check "bad --cores rejected" fails "$script" --cores 0-9
check "unknown interface fails" fails "$script" nosuch

# --- apply -----------------------------------------------------------------------------------

out=$("$script" --apply --rps same eth0 eth2 2>&1)
check "apply exits 0" test $? -eq 0
check "irq affinity written" file_is "$root/proc/irq/103/smp_affinity_list" 3
check "virtio tx irq written" file_is "$root/proc/irq/134/smp_affinity_list" 1
check "rps same written" file_is "$root/sys/class/net/eth0/queues/rx-2/rps_cpus" 00000004
check "xps written" file_is "$root/sys/class/net/eth0/queues/tx-1/xps_cpus" 00000002
check "other interfaces untouched" file_is "$root/proc/irq/110/smp_affinity_list" 0-3
out=$("$script" --rps same eth0 eth2 2>&1)
check "second run finds nothing to change" contains "$out" "Nothing to change"

out=$("$script" --apply --rps spread veth0 2>&1)
check "rps spread written" file_is "$root/sys/class/net/veth0/queues/rx-1/rps_cpus" 0000000f
out=$("$script" --apply --rps off veth0 2>&1)
check "rps off written" file_is "$root/sys/class/net/veth0/queues/rx-1/rps_cpus" 0

# A write that fails is reported and makes the exit status non-zero.
# Root writes through file modes, so as root the run drops to nobody (the fixture's files stay
# root's; the root check of --apply is skipped for fake trees).
chmod 0444 "$root/proc/irq/120/smp_affinity_list"
as_user=()
if ((EUID == 0)); then
    chmod -R a+rX "$root"
    as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
fi
out=$("${as_user[@]}" "$script" --apply eth1 2>&1)
status=$?
check "failed write -> exit 1" test "$status" -eq 1
check "failed write reported" contains "$out" "FAILED  IRQ 120 (eth1-rx-0) affinity"

# irqbalance is detected.
mkdir -p "$root/proc/4242" && echo irqbalance >"$root/proc/4242/comm"
out=$("$script" eth0 2>&1)
check "irqbalance warning" contains "$out" "irqbalance is running"

printf '%d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
