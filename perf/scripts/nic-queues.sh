#!/usr/bin/env bash
# nic-queues.sh: show, and with --apply set, how each NIC queue's interrupt and RPS/XPS masks line
# up with ringmesh's worker cores.
#
# Why this matters
# ----------------
# ringmesh runs one worker thread per core and keeps a connection on the core that accepted it.
# Each worker has its own SO_REUSEPORT listening socket with SO_INCOMING_CPU set to its core, so the
# kernel (Linux 6.2 and later) hands a new connection to the worker on the core whose softirq
# processed the SYN. If a NIC RX queue's interrupt fires on core k, that core processes the queue's
# packets, the SYN of a connection lands on core k, the worker pinned to core k accepts it, and every
# later packet of that connection arrives on the same core: no cross-core wake-up, no cache line
# moving between cores (cross-core wake-ups were the top hot spot measured in ringmesh's prototype).
# With the default setup (irqbalance or the driver spreading interrupts as it likes) packets arrive
# on one core and are served on another.
#
# So the mapping is: RX queue i -> worker core (i mod N), its IRQ pinned there; TX queue i -> the
# same core through XPS (so replies leave on the queue of the core that sends them, and the TX
# completion interrupt fires there); RPS off, because the hardware queue already delivers to the
# right core (or, with --rps same, RPS to that core as well, which still moves the protocol work
# onto the worker core when the platform refuses to move the IRQ itself).
#
# Worker cores: ringmesh pins worker k to the k-th CPU of its affinity mask. The default here is
# every online CPU in order, which matches a ringmesh started without taskset/cpuset limits and with
# runtime.workers = 0. Otherwise pass the same CPUs with --cores.
#
# The default is a dry run that prints the current state, the proposal and the exact writes; it
# changes nothing. --apply performs the writes (root only). irqbalance rewrites IRQ affinities every
# few seconds, so stop it (or ban these IRQs in its config) before --apply.
#
# Testing: NICQ_SYSFS and NICQ_PROCFS replace /sys and /proc, so the parsing and the writes can be
# exercised on a fake tree (see perf/scripts/test-nic-queues.sh).

set -u -o pipefail

SYSFS=${NICQ_SYSFS:-/sys}
PROCFS=${NICQ_PROCFS:-/proc}
PROG=${0##*/}

usage() {
    cat <<EOF
Usage: $PROG [--apply] [--cores LIST] [--rps off|same|spread] [INTERFACE...]

Show how each NIC queue's IRQ, RPS and XPS settings map to ringmesh worker cores, and propose
RX/TX queue i -> worker core (i mod N). Nothing is changed unless --apply is given.

Options:
  --apply          write the proposal: IRQ smp_affinity_list, rps_cpus, xps_cpus (needs root).
                   Stop irqbalance first, or it will undo the IRQ part.
  --cores LIST     worker cores in worker order, e.g. 0,1,2,3 or 0-3 or 2-5,8
                   (default: all online CPUs, which is where ringmesh puts its workers
                   when it runs unrestricted with runtime.workers = 0).
  --rps MODE       off     RPS disabled (default; the queue's IRQ already lands on the worker core)
                   same    RPS to the queue's worker core (useful when the IRQ cannot be moved)
                   spread  RPS to all worker cores, so every worker gets packets processed on its
                           own core even when the NIC has fewer queues than there are workers
  -h, --help       this text

INTERFACE: one or more interfaces. Without one, every interface with per-queue interrupts is
covered; software interfaces (lo, veth, bridges, ifb, tun) have no interrupts and are only
included when named, for their RPS/XPS masks.

Reads /proc/interrupts, /proc/irq/N/, /sys/class/net/IF/queues/ and
/sys/class/net/IF/device/msi_irqs. IRQs are matched by the usual driver names (IF-TxRx-N,
IF-Tx-Rx-N, IF-rx-N, IF-tx-N, IF-fp-N, IF-N, DRIVER-IF-TxRx-N, virtioM-input.N/output.N,
mlx5_compN@pci:ADDR); when none match, the device's MSI IRQs are assigned to queues in order,
and the output says so.

Examples:
  $PROG                         # dry run for all NICs, workers on all online CPUs
  $PROG --cores 0-3 eth0        # dry run for eth0, ringmesh running 4 workers on CPUs 0-3
  sudo $PROG --apply eth0       # write it (stop irqbalance first)
EOF
}

die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 2
}

warn() {
    printf 'warning: %s\n' "$*" >&2
}

# --- CPU lists and masks ----------------------------------------------------------------------

# "0-3,6" -> "0 1 2 3 6". Fails on anything that is not a CPU list.
expand_list() {
    local list=$1 part lo hi c cpus=()
    [[ -z $list ]] && return 0
    local IFS=,
    for part in $list; do
        if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
            lo=$((10#${BASH_REMATCH[1]})) hi=$((10#${BASH_REMATCH[2]}))
            ((lo <= hi)) || return 1
            for ((c = lo; c <= hi; c++)); do cpus+=("$c"); done
        elif [[ $part =~ ^[0-9]+$ ]]; then
            cpus+=("$((10#$part))")
        else
            return 1
        fi
    done
    IFS=' '
    printf '%s\n' "${cpus[*]}"
}

# "0 1 2 5" -> "0-2,5" (the kernel's list format). Input must be sorted, unique.
compress_list() {
    local text="" start="" prev="" c
    for c in $1; do
        if [[ -n $prev ]] && ((c == prev + 1)); then
            prev=$c
            continue
        fi
        [[ -n $start ]] && text+="${text:+,}$(range "$start" "$prev")"
        start=$c prev=$c
    done
    [[ -n $start ]] && text+="${text:+,}$(range "$start" "$prev")"
    printf '%s\n' "$text"
}

range() {
    if (($1 == $2)); then printf '%s' "$1"; else printf '%s-%s' "$1" "$2"; fi
}

# Sorted, de-duplicated "a b c".
sort_cpus() {
    # shellcheck disable=SC2086  # word splitting of the CPU list is intended
    printf '%s\n' $1 | sort -n -u | tr '\n' ' ' | sed 's/ $//'
}

# Hex CPU mask as in rps_cpus/xps_cpus ("00000000,00000003", commas between 32-bit words) -> "0-1".
mask_to_list() {
    local hex=${1//,/} cpus=() i digit bit pos=0
    [[ $hex =~ ^[0-9a-fA-F]+$ ]] || return 1
    for ((i = ${#hex} - 1; i >= 0; i--)); do
        digit=$((16#${hex:i:1}))
        for bit in 0 1 2 3; do
            ((digit >> bit & 1)) && cpus+=("$((pos * 4 + bit))")
        done
        pos=$((pos + 1))
    done
    compress_list "${cpus[*]}"
}

# "0 1 33" -> "00000002,00000003": one 32-bit word per 32 CPUs, highest first, so that CPU numbers
# above 63 work without overflowing shell arithmetic.
list_to_mask() {
    local c max=0 words=() w mask=""
    [[ -z $1 ]] && { printf '0\n'; return; }
    for c in $1; do ((c > max)) && max=$c; done
    for ((w = 0; w <= max / 32; w++)); do words[w]=0; done
    for c in $1; do words[c / 32]=$((words[c / 32] | 1 << (c % 32))); done
    for ((w = max / 32; w >= 0; w--)); do
        mask+="${mask:+,}$(printf '%08x' "${words[w]}")"
    done
    printf '%s\n' "$mask"
}

# Prints a file's first line, or fails (unreadable, missing, or a read error such as the ENOENT
# that xps_cpus returns on single-queue devices).
read_value() {
    local value
    { IFS= read -r value <"$1"; } 2>/dev/null || return 1
    printf '%s\n' "$value"
}

# --- interrupts -------------------------------------------------------------------------------

declare -A IRQ_NAMES=() # irq -> space-separated action names (several when the line is shared)
IRQ_LIST=()

load_interrupts() {
    local irq names
    [[ -r $PROCFS/interrupts ]] || return 0
    # The action names are the last field, or the last few when a shared line reads "a, b".
    while read -r irq names; do
        IRQ_NAMES[$irq]=$names
        IRQ_LIST+=("$irq")
    done < <(awk '$1 ~ /^[0-9]+:$/ {
            names = $NF
            for (i = NF - 1; i > 1 && $i ~ /,$/; i--) names = substr($i, 1, length($i) - 1) " " names
            print substr($1, 1, length($1) - 1), names
        }' "$PROCFS/interrupts")
}

# Escapes ERE metacharacters so an interface name or PCI address can go into a regex.
ere_escape() {
    printf '%s' "$1" | sed 's/[][\.*^$+?(){}|]/\\&/g'
}

# Prints "rx N", "tx N" or "rxtx N" when the IRQ action name belongs to queue N of the current
# interface (globals: re_if, re_virtio, re_pci). Prints nothing otherwise.
classify_irq_name() {
    local name=$1 n
    if [[ $name =~ ^([a-z0-9_]+-)?${re_if}-(TxRx|txrx|Tx-Rx|rxtx|RxTx|fp|combined)-([0-9]+)$ ]] ||
        [[ $name =~ ^${re_if}-([0-9]+)$ ]] ||
        { [[ -n $re_pci ]] && [[ $name =~ ^mlx5_comp([0-9]+)@pci:${re_pci}$ ]]; }; then
        n=${BASH_REMATCH[${#BASH_REMATCH[@]} - 1]}
        printf 'rxtx %s\n' "$((10#$n))"
    elif [[ $name =~ ^([a-z0-9_]+-)?${re_if}-(rx|Rx|RX)-([0-9]+)$ ]] ||
        { [[ -n $re_virtio ]] && [[ $name =~ ^${re_virtio}-input\.([0-9]+)$ ]]; }; then
        n=${BASH_REMATCH[${#BASH_REMATCH[@]} - 1]}
        printf 'rx %s\n' "$((10#$n))"
    elif [[ $name =~ ^([a-z0-9_]+-)?${re_if}-(tx|Tx|TX)-([0-9]+)$ ]] ||
        { [[ -n $re_virtio ]] && [[ $name =~ ^${re_virtio}-output\.([0-9]+)$ ]]; }; then
        n=${BASH_REMATCH[${#BASH_REMATCH[@]} - 1]}
        printf 'tx %s\n' "$((10#$n))"
    fi
}

# MSI vectors that serve the device rather than a queue (config, admin and async event queues).
is_control_irq_name() {
    [[ ${1,,} =~ (config|ctrl|control|mgmnt|mgmt|admin|async|event|misc|lsc|-aq|cmd|fw|ptp|other) ]]
}

# --- the plan ---------------------------------------------------------------------------------

PLAN_PATHS=()            # writes in order
declare -A PLAN_VALUE=() # path -> value to write
declare -A PLAN_WHAT=()  # path -> human description

plan_write() {
    local path=$1 value=$2 what=$3
    [[ -n ${PLAN_VALUE[$path]+set} ]] && return 0
    PLAN_PATHS+=("$path")
    PLAN_VALUE[$path]=$value
    PLAN_WHAT[$path]=$what
}

# Sets CHANGE to "now -> proposed" and plans the write, or to "now (ok)". Not called in a command
# substitution: the plan must survive. Arguments: current CPU list ("" = none), proposed CPU list,
# path, value to write, description.
CHANGE=""
describe_change() {
    local now=$1 want=$2 path=$3 value=$4 what=$5
    if [[ $now == "$want" ]]; then
        CHANGE="${now:-off} (ok)"
    else
        CHANGE="${now:-off} -> ${want:-off}"
        plan_write "$path" "$value" "$what"
    fi
}

# --- one interface ----------------------------------------------------------------------------

# Prints the table for one interface and adds its writes to the plan.
# $2 = "explicit" when the user named the interface.
show_interface() {
    local ifname=$1 explicit=$2
    local dir=$SYSFS/class/net/$ifname
    local nrx=0 ntx=0 q dev="" devname="" driver="" virtual=0 note=""
    [[ -d $dir ]] || { warn "no interface $ifname"; return 1; }

    for q in "$dir"/queues/rx-*; do [[ -d $q ]] && nrx=$((nrx + 1)); done
    for q in "$dir"/queues/tx-*; do [[ -d $q ]] && ntx=$((ntx + 1)); done

    if [[ -e $dir/device ]]; then
        dev=$(readlink -f "$dir/device")
        devname=${dev##*/}
        [[ -e $dir/device/driver ]] && driver=$(basename "$(readlink -f "$dir/device/driver")")
    else
        virtual=1
    fi

    # Find each queue's IRQs.
    local -A rx_irqs=() tx_irqs=()
    local irq name kind idx matched=0 how="by name"
    re_if=$(ere_escape "$ifname") re_virtio="" re_pci=""
    if ((!virtual)); then
        if [[ $devname =~ ^virtio[0-9]+$ ]]; then
            re_virtio=$devname
            re_pci=$(ere_escape "$(basename "$(readlink -f "$dev/..")")")
        else
            re_pci=$(ere_escape "$devname")
        fi
        for irq in "${IRQ_LIST[@]}"; do
            for name in ${IRQ_NAMES[$irq]}; do
                kind=$(classify_irq_name "$name")
                [[ -z $kind ]] && continue
                idx=${kind#* } kind=${kind% *}
                if [[ $kind != tx ]] && ((idx < nrx)); then rx_irqs[$idx]+="$irq "; matched=1; fi
                if [[ $kind != rx ]] && ((idx < ntx)); then tx_irqs[$idx]+="$irq "; matched=1; fi
            done
        done
        if ((!matched)); then
            # Fallback: the device's MSI vectors, minus control ones. A virtio device's vectors
            # belong to its PCI parent; any other parent is a bridge whose vectors are its own.
            local msi_dir=$dev/msi_irqs queue_irqs=()
            [[ -n $re_virtio ]] && msi_dir=$dev/../msi_irqs
            if [[ -d $msi_dir ]]; then
                for irq in $(printf '%s\n' "$msi_dir"/* | sed 's|.*/||' | sort -n); do
                    [[ $irq =~ ^[0-9]+$ ]] || continue
                    name=${IRQ_NAMES[$irq]:-}
                    if [[ -n $name ]] && ! is_control_irq_name "$name"; then
                        queue_irqs+=("$irq")
                    fi
                done
            fi
            how="by MSI order (names not recognised; check them)"
            if ((${#queue_irqs[@]} > 0 && ${#queue_irqs[@]} == nrx)); then
                for ((idx = 0; idx < nrx; idx++)); do
                    rx_irqs[$idx]="${queue_irqs[idx]} "
                    ((nrx == ntx)) && tx_irqs[$idx]="${queue_irqs[idx]} "
                done
                matched=1
            elif ((${#queue_irqs[@]} > 0 && ${#queue_irqs[@]} == nrx + ntx)); then
                for ((idx = 0; idx < nrx; idx++)); do rx_irqs[$idx]="${queue_irqs[idx]} "; done
                for ((idx = 0; idx < ntx; idx++)); do tx_irqs[$idx]="${queue_irqs[nrx + idx]} "; done
                matched=1
            elif ((${#queue_irqs[@]} > 0)); then
                note="device IRQs ${queue_irqs[*]} could not be matched to queues ($nrx RX, $ntx TX); their affinity is left alone"
            else
                note="no per-queue IRQs found for driver ${driver:-unknown} (e.g. vmbus/netvsc, or a NIC without MSI-X); only RPS/XPS apply"
            fi
        fi
    else
        note="software device: no interrupts; its packets are processed on the CPU that sends them unless RPS says otherwise"
    fi

    # Without a name, software interfaces (container veths, bridges, lo) are left out: they have no
    # interrupts, and spreading RPS over them is a choice to make per interface.
    if ((virtual)) && [[ $explicit != explicit ]]; then
        SKIPPED+=("$ifname")
        return 0
    fi

    local label=${driver:-unknown driver}${devname:+ ($devname)}
    ((virtual)) && label="software device"
    SHOWN=$((SHOWN + 1))
    printf '\n%s: %s, %d RX / %d TX queues, worker cores %s\n' "$ifname" "$label" "$nrx" "$ntx" "$CORES_SHOWN"
    if ((nrx == 0 && ntx == 0)); then
        printf '  no queues under %s/queues: nothing to map\n' "$dir"
        return 0
    fi
    ((matched)) && [[ $how != "by name" ]] && printf '  IRQs matched to queues %s\n' "$how"
    [[ -n $note ]] && printf '  %s\n' "$note"
    printf '  %-6s %-5s %-5s %-22s %-26s %s\n' queue core irq "irq name" "irq cpus" "rps (rx) / xps (tx)"

    local i core want now value path masks_col
    for ((i = 0; i < nrx; i++)); do
        core=${CORES[i % NCORES]}
        path=$dir/queues/rx-$i/rps_cpus
        case $RPS_MODE in
            off) want="" ;;
            same) want=$core ;;
            spread) want=$(compress_list "$(sort_cpus "${CORES[*]}")") ;;
        esac
        if value=$(read_value "$path") && now=$(mask_to_list "$value"); then
            describe_change "$now" "$want" "$path" "$(list_to_mask "$(expand_list "$want")")" "$ifname rx-$i RPS"
            masks_col="rps $CHANGE"
        else
            masks_col="rps unavailable (kernel without CONFIG_RPS?)"
        fi
        print_queue_rows "rx-$i" "$core" "${rx_irqs[$i]:-}" "$masks_col"
    done
    for ((i = 0; i < ntx; i++)); do
        core=${CORES[i % NCORES]}
        # XPS: this queue serves its own core, plus the worker cores beyond the queue count that
        # wrap around to it, so that every worker core sends on exactly one queue.
        local xps_cpus="" k
        for ((k = 0; k < NCORES; k++)); do
            ((k % ntx == i)) && xps_cpus+="${CORES[k]} "
        done
        want=$(compress_list "$(sort_cpus "$xps_cpus $core")")
        path=$dir/queues/tx-$i/xps_cpus
        if ((ntx < 2)); then
            masks_col="xps n/a (single TX queue)"
        elif value=$(read_value "$path") && now=$(mask_to_list "$value"); then
            describe_change "$now" "$want" "$path" "$(list_to_mask "$(expand_list "$want")")" "$ifname tx-$i XPS"
            masks_col="xps $CHANGE"
        else
            masks_col="xps unreadable"
        fi
        print_queue_rows "tx-$i" "$core" "${tx_irqs[$i]:-}" "$masks_col"
    done

    if ((nrx > 0 && nrx < NCORES)) && ((matched)); then
        local spare=()
        for ((i = nrx; i < NCORES; i++)); do spare+=("${CORES[i]}"); done
        printf '  note: %d RX queue(s) for %d worker cores: core(s) %s have no RX queue of their own here.\n' \
            "$nrx" "$NCORES" "$(compress_list "$(sort_cpus "${spare[*]}")")"
        printf '        More queues help (ethtool -L %s combined %d, if the NIC allows); otherwise --rps spread\n' "$ifname" "$NCORES"
        printf '        lets every worker core process its own connections'"'"' packets.\n'
    fi
}

# One row per IRQ of a queue (or one row without IRQ). Plans the IRQ affinity writes.
print_queue_rows() {
    local queue=$1 core=$2 irqs=$3 masks_col=$4 irq first=1 name now eff col path
    if [[ -z $irqs ]]; then
        printf '  %-6s %-5s %-5s %-22s %-26s %s\n' "$queue" "$core" - - - "$masks_col"
        return
    fi
    for irq in $irqs; do
        name=${IRQ_NAMES[$irq]:-?}
        path=$PROCFS/irq/$irq/smp_affinity_list
        if now=$(read_value "$path"); then
            now=$(compress_list "$(sort_cpus "$(expand_list "$now")")")
            describe_change "$now" "$core" "$path" "$core" "IRQ $irq ($name) affinity"
            col=$CHANGE
            # The effective affinity is where the interrupt really fires (x86 picks one CPU of the mask).
            if eff=$(read_value "$PROCFS/irq/$irq/effective_affinity_list") && [[ $eff != "$now" ]]; then
                col+=" [fires on $eff]"
            fi
        else
            col="unreadable"
        fi
        if ((first)); then
            printf '  %-6s %-5s %-5s %-22s %-26s %s\n' "$queue" "$core" "$irq" "${name// /,}" "$col" "$masks_col"
            first=0
        else
            printf '  %-6s %-5s %-5s %-22s %s\n' "" "" "$irq" "${name// /,}" "$col"
        fi
    done
}

# --- main -------------------------------------------------------------------------------------

APPLY=0
RPS_MODE=off
CORES_ARG=""
INTERFACES=()
while (($#)); do
    case $1 in
        --apply) APPLY=1 ;;
        --cores) (($# >= 2)) || die "--cores needs a list such as 0-3"; CORES_ARG=$2; shift ;;
        --cores=*) CORES_ARG=${1#*=} ;;
        --rps) (($# >= 2)) || die "--rps needs off, same or spread"; RPS_MODE=$2; shift ;;
        --rps=*) RPS_MODE=${1#*=} ;;
        -h | --help) usage; exit 0 ;;
        --) shift; INTERFACES+=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) INTERFACES+=("$1") ;;
    esac
    shift
done
case $RPS_MODE in off | same | spread) ;; *) die "--rps must be off, same or spread, not '$RPS_MODE'" ;; esac

ONLINE=$(read_value "$SYSFS/devices/system/cpu/online") || die "cannot read $SYSFS/devices/system/cpu/online"
ONLINE_CPUS=$(expand_list "$ONLINE") || die "cannot parse the online CPU list '$ONLINE'"
if [[ -n $CORES_ARG ]]; then
    cores=$(expand_list "$CORES_ARG") || die "--cores: '$CORES_ARG' is not a CPU list (try 0,1,2 or 0-3)"
    read -r -a CORES <<<"$cores"
    declare -A seen_core=()
    for c in "${CORES[@]}"; do
        [[ " $ONLINE_CPUS " == *" $c "* ]] || die "--cores: CPU $c is not online (online: $ONLINE)"
        [[ -z ${seen_core[$c]:-} ]] || die "--cores: CPU $c is listed twice"
        seen_core[$c]=1
    done
else
    read -r -a CORES <<<"$ONLINE_CPUS"
fi
NCORES=${#CORES[@]}
((NCORES > 0)) || die "no worker cores"
# Worker order matters (worker k runs on the k-th core), so a list given out of order is shown as is.
CORES_SHOWN=$(compress_list "$(sort_cpus "${CORES[*]}")")
[[ $(sort_cpus "${CORES[*]}") == "${CORES[*]}" ]] || CORES_SHOWN=$(IFS=,; printf '%s' "${CORES[*]}")

if ((APPLY)) && ((EUID != 0)) && [[ -z ${NICQ_SYSFS:-}${NICQ_PROCFS:-} ]]; then
    die "--apply writes /proc/irq/*/smp_affinity_list and /sys/class/net/*/queues/*: run it as root (sudo $PROG --apply ...). Without --apply it only shows the plan."
fi

[[ -d $SYSFS/class/net ]] || die "$SYSFS/class/net not found"
load_interrupts
((${#IRQ_LIST[@]})) || warn "$PROCFS/interrupts is unreadable or empty: IRQs cannot be shown"

SKIPPED=()
SHOWN=0
failed_lookup=0
if ((${#INTERFACES[@]})); then
    for ifname in "${INTERFACES[@]}"; do
        show_interface "$ifname" explicit || failed_lookup=1
    done
else
    for ifdir in "$SYSFS"/class/net/*; do
        [[ -e $ifdir ]] || continue
        show_interface "${ifdir##*/}" auto
    done
fi
if ((${#SKIPPED[@]})); then
    printf '\nskipped software interfaces (no interrupts; name one to see or set its RPS/XPS): %s\n' "${SKIPPED[*]}"
fi

# SO_INCOMING_CPU steering across a reuseport group works from Linux 6.2 on.
kernel=$(read_value "$PROCFS/sys/kernel/osrelease") || kernel=$(uname -r)
if [[ $kernel =~ ^([0-9]+)\.([0-9]+) ]] &&
    ((BASH_REMATCH[1] < 6 || (BASH_REMATCH[1] == 6 && BASH_REMATCH[2] < 2))); then
    printf '\nnote: kernel %s: before Linux 6.2 SO_INCOMING_CPU does not reliably pick the reuseport\n' "$kernel"
    printf '      socket of the receiving core, so this mapping keeps interrupts local but connections\n'
    printf '      may still be accepted on another core.\n'
fi

irqbalance_running=0
for comm in "$PROCFS"/[0-9]*/comm; do
    { read -r name <"$comm"; } 2>/dev/null || continue
    [[ $name == irqbalance ]] && { irqbalance_running=1; break; }
done
if ((irqbalance_running)); then
    warn "irqbalance is running: it will move the IRQs back within seconds. Stop it first" \
        "(systemctl disable --now irqbalance), or list these IRQs in IRQBALANCE_BANNED_INTERRUPTS" \
        "(or --banirq) in its config."
fi

if ((${#PLAN_PATHS[@]} == 0)); then
    ((SHOWN)) && printf '\nNothing to change: the current settings already match.\n'
    exit "$failed_lookup"
fi

# Writes in a readable order: IRQ affinities, then RPS, then XPS.
ordered=()
for pattern in '*/smp_affinity_list' '*/rps_cpus' '*/xps_cpus'; do
    for path in "${PLAN_PATHS[@]}"; do
        # shellcheck disable=SC2053  # $pattern is a glob on purpose
        [[ $path == $pattern ]] && ordered+=("$path")
    done
done
PLAN_PATHS=("${ordered[@]}")
irq_writes=0
for path in "${PLAN_PATHS[@]}"; do [[ $path == */smp_affinity_list ]] && irq_writes=$((irq_writes + 1)); done

if ((!APPLY)); then
    printf '\nDry run: nothing was changed. --apply (as root) would write:\n'
    for path in "${PLAN_PATHS[@]}"; do
        printf '  echo %-24s > %s    # %s\n' "${PLAN_VALUE[$path]}" "$path" "${PLAN_WHAT[$path]}"
    done
    ((irqbalance_running || !irq_writes)) || printf 'irqbalance is not running; if it is started later it will undo the IRQ affinities.\n'
    exit "$failed_lookup"
fi

printf '\nApplying:\n'
failures=0
for path in "${PLAN_PATHS[@]}"; do
    value=${PLAN_VALUE[$path]}
    if err=$({ printf '%s\n' "$value" >"$path"; } 2>&1); then
        printf '  ok      %-40s %s <- %s\n' "${PLAN_WHAT[$path]}" "$path" "$value"
    else
        failures=$((failures + 1))
        printf '  FAILED  %-40s %s <- %s: %s\n' "${PLAN_WHAT[$path]}" "$path" "$value" "${err##*: }"
    fi
done
if ((failures)); then
    printf '\n%d write(s) failed. Common causes: a read-only /sys or /proc (containers), a managed IRQ\n' "$failures"
    printf 'whose affinity the kernel owns (EIO), or a hypervisor that does not allow moving the IRQ.\n'
    printf 'For an IRQ that cannot move, --rps same still moves packet processing to the worker core.\n'
    exit 1
fi
printf 'Done.'
((irqbalance_running || !irq_writes)) || printf ' If irqbalance is started later it will undo the IRQ affinities.'
printf '\n'
exit "$failed_lookup"
