#!/usr/bin/env bash
# Host side of `make test-arm64`, idempotent (`make setup-arm64`, as root on Debian bookworm):
#  - qemu-system-arm 1:10.0.x from bookworm-backports (the suite is added to apt if missing);
#  - the two arm64 host kernels, fetched through a private apt configuration (the system's apt
#    never learns about arm64 or trixie) and unpacked under build/arm64/:
#      Image-6.12  linux-image-6.12.*+deb12-arm64-unsigned (bookworm-backports): KVM, nVHE
#      Image-7.3   linux-binary-7.3.*-arm64 + linux-base-7.3.*-arm64 (trixie-backports): pKVM
#                  protected VMs and guest_memfd
#    with their config and version beside them. A second run downloads nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${ARM64_BUILD:-$ROOT/build/arm64}
MIRROR=http://deb.debian.org/debian
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
QEMU_VERSION_GLOB='1:10.0.*'

log() { echo "setup-arm64: $*"; }

# --- qemu-system-aarch64 --------------------------------------------------------------------

qemu_ok() {
    local v
    v=$(dpkg-query -W -f '${Version}' qemu-system-arm 2>/dev/null) || return 1
    # shellcheck disable=SC2053
    [[ $v == $QEMU_VERSION_GLOB ]] && command -v qemu-system-aarch64 >/dev/null
}

if ! qemu_ok; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        log "adding bookworm-backports to /etc/apt/sources.list.d/bookworm-backports.sources"
        cat >/etc/apt/sources.list.d/bookworm-backports.sources <<SRC
Types: deb
URIs: $MIRROR
Suites: bookworm-backports
Components: main
Signed-By: $KEYRING
SRC
    fi
    log "installing qemu-system-arm from bookworm-backports"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports qemu-system-arm >/dev/null
    qemu_ok || { log "qemu-system-arm is $(dpkg-query -W -f '${Version}' qemu-system-arm), want $QEMU_VERSION_GLOB"; exit 1; }
fi
log "$(qemu-system-aarch64 --version | head -1)"

# --- the arm64 kernels ----------------------------------------------------------------------

if [[ -s $OUT/Image-6.12 && -s $OUT/Image-7.3 && -s $OUT/config-7.3 ]]; then
    log "kernels cached: $(cat "$OUT/version-6.12"), $(cat "$OUT/version-7.3")"
    exit 0
fi

APT=$OUT/apt
mkdir -p "$APT/state/lists/partial" "$APT/cache/archives/partial" "$APT/empty" "$OUT/dl"
cat >"$APT/sources.list" <<SRC
deb [arch=arm64 signed-by=$KEYRING] $MIRROR bookworm-backports main
deb [arch=arm64 signed-by=$KEYRING] $MIRROR trixie-backports main
SRC
# Nothing from the system's configuration but apt.conf.d (signature checking stays on).
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APT/sources.list" -o "Dir::Etc::sourceparts=$APT/empty"
    -o "Dir::Etc::preferences=$APT/empty/none" -o "Dir::Etc::preferencesparts=$APT/empty"
    -o "Dir::State=$APT/state" -o "Dir::State::status=/dev/null" -o "Dir::Cache=$APT/cache"
    -o "APT::Architecture=arm64" -o "APT::Architectures::=arm64" -o "APT::Sandbox::User=root"
)
log "reading the arm64 package indices (private apt state in $APT)"
apt-get "${APT_OPTS[@]}" -qq update

# The newest package whose name matches the regex $1.
newest() {
    apt-cache "${APT_OPTS[@]}" search --names-only "$1" | awk '{print $1}' | sort -V | tail -1
}

# Downloads package $1 into dl/ (apt checks its hash against the signed index).
fetch() {
    local deb
    (cd "$OUT/dl" && apt-get "${APT_OPTS[@]}" -qq download "$1" >/dev/null)
    deb=$(ls -t "$OUT/dl/$1"_*_arm64.deb | head -1)
    echo "$deb"
}

# Unpacks the kernel and config of the .debs $3... into build/arm64/{Image,config,version}-$1;
# $2 is the kernel release. Packages up to 6.x put them in /boot/{vmlinuz,config}-$2, the 7.x
# ones in /usr/lib/modules/$2/{vmlinuz,config}.
unpack() {
    local tag=$1 kver=$2 tmp vmlinuz config
    shift 2
    tmp=$(mktemp -d "$OUT/unpack.XXXX")
    for deb in "$@"; do dpkg-deb -x "$deb" "$tmp"; done
    vmlinuz=$tmp/boot/vmlinuz-$kver config=$tmp/boot/config-$kver
    if [[ ! -e $vmlinuz ]]; then
        vmlinuz=$tmp/usr/lib/modules/$kver/vmlinuz config=$tmp/usr/lib/modules/$kver/config
    fi
    [[ -e $vmlinuz && -e $config ]] || { log "no vmlinuz/config for $kver in $*"; exit 1; }
    # Debian's arm64 vmlinuz is a plain Image (measured: both kernels); should one be
    # gzip-compressed, QEMU would boot it too, but a plain Image saves the inflate per boot.
    if gzip -t "$vmlinuz" 2>/dev/null; then
        gunzip -c "$vmlinuz" >"$OUT/Image-$tag.part"
    else
        cp "$vmlinuz" "$OUT/Image-$tag.part"
    fi
    cp "$config" "$OUT/config-$tag"
    echo "$kver" >"$OUT/version-$tag"
    mv "$OUT/Image-$tag.part" "$OUT/Image-$tag"
    rm -rf "$tmp"
}

pkg612=$(newest '^linux-image-6\.12\.[0-9]+\+deb12-arm64-unsigned$')
pkg73=$(newest '^linux-binary-7\.3\.[0-9]+\+deb13-arm64$')
[[ -n $pkg612 && -n $pkg73 ]] || { log "kernel packages not found in the indices"; exit 1; }
base73=${pkg73/linux-binary-/linux-base-}
log "fetching $pkg612, $pkg73, $base73"
rel612=${pkg612#linux-image-}
unpack 6.12 "${rel612%-unsigned}" "$(fetch "$pkg612")"
unpack 7.3 "${pkg73#linux-binary-}" "$(fetch "$pkg73")" "$(fetch "$base73")"
grep -q '^CONFIG_KVM=y' "$OUT/config-7.3" || { log "the 7.3 kernel has no built-in KVM"; exit 1; }
rm -rf "$OUT/dl"
log "kernels: $(cat "$OUT/version-6.12"), $(cat "$OUT/version-7.3") in $OUT"
