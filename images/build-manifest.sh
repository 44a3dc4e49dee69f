#!/usr/bin/env bash
# Collects the guest image parts into images/out/ and writes manifest.json with the size
# and SHA-256 of each part; `flexserve run` checks them before it boots a guest.
# Usage: images/build-manifest.sh TARGET_DIR
set -euo pipefail
target=${1:?target dir}
out="$(dirname "$0")/out"
mkdir -p "$out"
cp "$target/x86_64-unknown-none/release/flexserve-guest-kernel" "$out/kernel.elf"
cp "$target/release/flexserve-engine" "$out/engine.elf"
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
