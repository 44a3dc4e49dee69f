#!/usr/bin/env bash
# Collects the guest image parts of one architecture and writes manifest.json beside them
# with the size and SHA-256 of each part; `flexserve run` checks them before it boots a guest.
# Usage: images/build-manifest.sh TARGET_DIR [ARCH [probes]]
#   x86_64 (the default): images/out/ from x86_64-unknown-none (kernel) and the host target
#   (engine), as `make image` builds them;
#   aarch64: images/out-aarch64/, both from aarch64-unknown-none (`make image-arm64`).
#   probes: the engine just built is the test build (feature `probes`, memory probes): its
#   images go to images/out-probes/ (out-aarch64-probes/), never where `flexserve` looks.
set -euo pipefail
target=${1:?target dir}
arch=${2:-x86_64}
variant=${3:-}
here=$(dirname "$0")
case "$arch" in
    x86_64)
        out="$here/out"
        kernel="$target/x86_64-unknown-none/release/flexserve-guest-kernel"
        engine="$target/release/flexserve-engine"
        ;;
    aarch64)
        out="$here/out-aarch64"
        kernel="$target/aarch64-unknown-none/release/flexserve-guest-kernel"
        engine="$target/aarch64-unknown-none/release/flexserve-engine"
        ;;
    *)
        echo "build-manifest: unknown architecture '$arch' (x86_64 or aarch64)" >&2
        exit 2
        ;;
esac
case "$variant" in
    "") ;;
    probes) out="$out-probes" ;;
    *)
        echo "build-manifest: unknown variant '$variant' (probes or none)" >&2
        exit 2
        ;;
esac
mkdir -p "$out"
cp "$kernel" "$out/kernel.elf"
cp "$engine" "$out/engine.elf"
entry() {
    local f="$out/$1"
    printf '  "%s": {"file": "%s", "bytes": %s, "sha256": "%s"}' "$2" "$1" \
        "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -d' ' -f1)"
}
{
    echo "{"
    echo '  "format": 1,'
    entry kernel.elf kernel; echo ","
    entry engine.elf engine; echo
    echo "}"
} > "$out/manifest.json.part"
mv "$out/manifest.json.part" "$out/manifest.json"
