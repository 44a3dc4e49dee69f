#!/usr/bin/env bash
# Boots the emulated arm64 host (QEMU TCG with EL2) on INITRAMFS and reports what its /init
# (arm64-init) said:
#
#   run-qemu.sh MODE INITRAMFS LOG
#
# MODE normal:    build/arm64/Image-6.12, kvm-arm.mode=nvhe
# MODE protected: build/arm64/Image-7.3,  kvm-arm.mode=protected (pKVM)
#
# The console goes to stdout and LOG. QEMU's exit status says nothing about the tests: the
# status is 0 when the console has `FLEXSERVE-ARM64: PASS`, 1 on `FLEXSERVE-ARM64: FAIL` or no
# marker, 124 when QEMU was still running after ARM64_TIMEOUT seconds (default 1200).
# ARM64_MEMORY (default 3G) and ARM64_CPUS (default 2) size the emulated host.
set -uo pipefail

usage() { echo "usage: $0 normal|protected INITRAMFS LOG" >&2; exit 2; }
[[ $# -eq 3 ]] || usage
MODE=$1 INITRAMFS=$2 LOG=$3
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KDIR=${ARM64_BUILD:-$ROOT/build/arm64}
case $MODE in
    normal) KERNEL=$KDIR/Image-6.12 KVM_MODE=nvhe ;;
    protected) KERNEL=$KDIR/Image-7.3 KVM_MODE=protected ;;
    *) usage ;;
esac
for f in "$KERNEL" "$INITRAMFS"; do
    [[ -s $f ]] || { echo "run-qemu: $f missing (make setup-arm64?)" >&2; exit 2; }
done
TIMEOUT=${ARM64_TIMEOUT:-1200}

start=$(date +%s%N)
# -nic none: without it QEMU stops on a missing efi-virtio.rom. -no-reboot: the guest's
# power-off (or a panic's reboot) ends QEMU. `timeout -k`: a wedged guest never exits.
timeout -k 10 "$TIMEOUT" qemu-system-aarch64 \
    -M virt,virtualization=on,gic-version=3 -cpu max,pauth-impdef=on \
    -smp "${ARM64_CPUS:-2}" -m "${ARM64_MEMORY:-3G}" -nic none -no-reboot -nographic \
    -kernel "$KERNEL" -initrd "$INITRAMFS" \
    -append "console=ttyAMA0 kvm-arm.mode=$KVM_MODE rdinit=/init quiet panic=-1" \
    </dev/null 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
ms=$((($(date +%s%N) - start) / 1000000))
printf 'run-qemu: %s: QEMU ran %d.%d s (status %s)\n' "$MODE" $((ms / 1000)) $((ms % 1000 / 100)) "$status" | tee -a "$LOG"

if [[ $status -eq 124 || $status -eq 137 ]]; then
    echo "run-qemu: $MODE: TIMEOUT after ${TIMEOUT}s" | tee -a "$LOG"
    exit 124
fi
# The marker is exact and alone on its line (the console may end lines with \r).
markers=$(tr -d '\r' <"$LOG" | grep -E '^FLEXSERVE-ARM64: (PASS|FAIL)$' || true)
case $markers in
    "FLEXSERVE-ARM64: PASS") echo "run-qemu: $MODE: PASS"; exit 0 ;;
    "") echo "run-qemu: $MODE: FAIL (no marker: /init never finished)"; exit 1 ;;
    *) echo "run-qemu: $MODE: FAIL"; exit 1 ;;
esac
