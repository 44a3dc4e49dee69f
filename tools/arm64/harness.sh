#!/usr/bin/env bash
# `make test-arm64` / `make bench-arm64`: builds the arm64 pieces, stages one initramfs per
# mode and boots each once under QEMU (tools/arm64/run-qemu.sh); arm64-init runs the checks
# inside the emulated host and prints the PASS/FAIL marker.
#
#   harness.sh test|bench
#
# ARM64_MODES    modes to boot, in order (default "normal protected")
# ARM64_PARALLEL 1: boot the modes at the same time (default: one after the other). It
#                saves up to the normal boot's time on an idle 2-core machine, but on a
#                loaded one the protected guests then missed their 30 s answer deadline
#                (measured 2026-12-06, load 10-13: they passed with the protected boot
#                alone), so it is not the default.
# ARM64_CHECKS   all (default): everything below; kvm: only the KVM checks (needs no arm64
#                VMM, guest images or test binaries)
# ARM64_TIMEOUT  seconds per QEMU boot (default 2400)
# ARM64_MODEL    the model of the greedy and bench checks (default models/tiny.Q4_K.gguf)
# ARM64_PROMPTS  how many of the three greedy prompts the normal boot checks (default 1;
#                the protected boot checks one). The NEON kernels' parity is `make
#                test-neon`'s; here one prompt shows the arm64 VMM and guest compute what the
#                x86_64 engine does, and the two others cost CI 30 s for the same answer.
# ARM64_ONLY     an extended regex: only the checks whose names match run (default: all)
# ARM64_BESIDE_BOOTS  a shell command run at nice 19 while the boots run (`make test`: lint
#                and fuzz-check); its output goes to build/arm64/run/beside.log, its failure
#                fails the harness. The emulated host leaves about a third of the two cores
#                idle (QEMU ran 54 s on 70 CPU-s); at nice 19 the command takes that rather
#                than the guests' time, whose answers have deadlines.
# Output under build/arm64/run/: the staging tree, <mode>.cpio, <mode>.log (the console,
# printed here too with a "[mode] " prefix).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
WHAT=${1:-}
[[ $WHAT == test || $WHAT == bench ]] || { echo "usage: $0 test|bench" >&2; exit 2; }
MODES=${ARM64_MODES:-normal protected}
CHECKS=${ARM64_CHECKS:-all}
export ARM64_TIMEOUT=${ARM64_TIMEOUT:-2400}
CARGO=${CARGO:-cargo}
RUN=$ROOT/build/arm64/run
STAGE=$RUN/stage
MUSL=aarch64-unknown-linux-musl
# tiny.Q4_K: the arm64 NEON engine's greedy output equals the x86_64 one for it (measured;
# tiny.Q8_0, tiny.Q6_K, tiny-qwen2.Q8_0 and SmolLM2 Q4_1 differ after 20-60 tokens, also under
# qemu-user: an engine matter, not the VMM's).
MODEL=${ARM64_MODEL:-models/tiny.Q4_K.gguf}
IMAGES=images/out-aarch64
PROMPTS=("Write a haiku about the sea." "Explain what a hypervisor does." "List three prime numbers.")
GEN_TOKENS=64

log() { echo "arm64-$WHAT: $*"; }
t0=$(date +%s)

# The e2e test binaries the checks below run: only these are built and staged.
E2E_TESTS=(boot guest virtio_echo private_memory memory_budget guest_sealed guest_sealed_session prompt_scan
    serve_proxy serve_batch)
# Cargo for the emulated host's binaries (arm64-init, flexserve, the tests). The checks test
# the VMM and guests, not these binaries' speed: build them without LTO, with parallel codegen
# and without debug info, which takes minutes off CI. `bench` keeps the release profile (it
# times them); the guest images always have it (make image-arm64).
# With unwinding too: the test binaries need it, and cargo builds a test's dependencies with
# it when the profile says `abort`, so /bin/flexserve's dependencies were all built twice
# (95 s, then 102 s for the tests; with one panic strategy the tests rebuild only vmm,
# flexserve and their own crate). A panic fails a check either way.
musl_cargo() {
    if [[ $WHAT == test ]]; then
        CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
            CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_PANIC=unwind $CARGO "$@"
    else
        $CARGO "$@"
    fi
}

# --- build ----------------------------------------------------------------------------------

log "building arm64-init"
musl_cargo build --release --quiet -p arm64-init --target $MUSL
rm -rf "$STAGE" && mkdir -p "$STAGE/bin" "$STAGE/tests" "$STAGE/expected"
cp target/$MUSL/release/arm64-init "$STAGE/init"

# A piece that does not build is reported and fails the run, but the checks that do not need it
# still run (one boot says as much as it can).
missing=()
have() { [[ " ${built[*]} " == *" $1 "* ]]; }
built=()
try() {
    local piece=$1
    shift
    if "$@"; then built+=("$piece"); else missing+=("$piece"); log "MISSING $piece: $* failed"; fi
}

build_images() {
    # The images keep the release profile whatever the caller's environment says (CI turns
    # LTO off for its host builds): the guest runs them under TCG, where their speed is the
    # checks' time (without LTO the protected boot took 20% longer).
    env -u CARGO_PROFILE_RELEASE_LTO -u CARGO_PROFILE_RELEASE_CODEGEN_UNITS \
        make --no-print-directory image-arm64 || return 1
    # The guest images, model and programs at the same absolute paths as here, so the e2e
    # tests (which find them from their build-time source path) find them there too.
    # The test build of the engine (memory probes) too, which tests find beside the images.
    mkdir -p "$STAGE$ROOT/$IMAGES" "$STAGE$ROOT/$IMAGES-probes" \
        "$STAGE$ROOT/target/aarch64-unknown-none/release"
    cp $IMAGES/* "$STAGE$ROOT/$IMAGES/"
    cp $IMAGES-probes/* "$STAGE$ROOT/$IMAGES-probes/"
    find target/aarch64-unknown-none/release -maxdepth 1 -type f -perm -u+x \
        -exec cp {} "$STAGE$ROOT/target/aarch64-unknown-none/release/" \;
}

build_flexserve() {
    # No `pypi` feature: its TLS compiles C, and there is no aarch64 C compiler here.
    musl_cargo build --release --quiet -p flexserve --no-default-features --target $MUSL || return 1
    cp target/$MUSL/release/flexserve "$STAGE/bin/"
}

# The e2e test binaries. /bin/flexserve is built apart (build_flexserve): these builds
# carry the `test-hooks` feature, which the product binary the checks run must not have.
build_tests() {
    local json
    # The daemon's crate (built again here, with the hooks) at opt-level 1, as the x86_64
    # test profile has it (Cargo.toml): glue around the VMM, engine and cryptography. Not
    # the tests' own crate: its memory scans run under TCG in these checks.
    json=$(musl_cargo test -p flexserve-e2e --release --target $MUSL --no-run --message-format=json \
        --config 'profile.release.package.flexserve.opt-level=1' \
        "${E2E_TESTS[@]/#/--test=}") || return 1
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' <<<"$json" >"$RUN/tests.txt"
    while read -r name exe; do cp "$exe" "$STAGE/tests/$name"; done <"$RUN/tests.txt"
    for t in "${E2E_TESTS[@]}"; do
        [[ -x $STAGE/tests/$t ]] || { log "no test binary $t for $MUSL"; return 1; }
    done
}

# The x86_64 host engine's greedy output for each prompt (flexserve run --unprotected).
# The profile is the Makefile's FLEXSERVE_HOST_PROFILE (CI's `test`: the binary its tests ran).
build_expected() {
    local profile=${FLEXSERVE_HOST_PROFILE:-release} dir
    case $profile in test | dev) dir=debug ;; *) dir=$profile ;; esac
    $CARGO build --profile "$profile" --quiet -p flexserve || return 1
    for i in "${!PROMPTS[@]}"; do
        target/$dir/flexserve run --unprotected -m $MODEL --temperature 0 -n $GEN_TOKENS \
            "${PROMPTS[$i]}" >"$STAGE/expected/$i.txt" 2>"$RUN/expected-$i.err" || return 1
        [[ -s $STAGE/expected/$i.txt ]] || return 1
    done
}

if [[ $CHECKS == all ]]; then
    [[ -s $MODEL ]] || { log "$MODEL missing: run make models"; exit 1; }
    # tests/ too: the e2e tests look for $ROOT/tests/../target and ../models.
    # tiny.Q8_0 for the private-memory test (the engine holding a canary beside a model).
    mkdir -p "$STAGE$ROOT/models" "$STAGE$ROOT/tests"
    cp $MODEL "$STAGE$ROOT/models/"
    [[ $WHAT == bench ]] || cp models/tiny.Q8_0.gguf "$STAGE$ROOT/models/"
    log "building the arm64 guest images (make image-arm64)"
    try images build_images
    log "building flexserve for $MUSL"
    try flexserve build_flexserve
    if [[ $WHAT == test ]]; then
        log "building the e2e test binaries for $MUSL"
        try e2e-tests build_tests
        log "expected outputs from the x86_64 host engine (flexserve run --unprotected, greedy)"
        try expected build_expected
    fi
fi
tb=$(date +%s)
log "built and staged in $((tb - t0)) s"

# --- the checks of each mode ----------------------------------------------------------------

# Prints /checks for mode $1 (format: arm64-init/src/checks.rs).
checks() {
    local mode=$1 vm=normal guest_env i
    if [[ $mode == protected ]]; then
        echo "kvm-vm-normal timeout=120 /init kvm-vm normal"
        echo "kvm-vm-protected timeout=120 /init kvm-vm protected"
    else
        echo "kvm-vm-normal timeout=120 /init kvm-vm normal"
        echo "kvm-vm-protected-refused timeout=120 /init kvm-vm protected --expect-refused"
    fi
    [[ $CHECKS == all ]] || return 0
    local run="/bin/flexserve run -m $ROOT/$MODEL --images $ROOT/$IMAGES --temperature 0"
    if [[ $WHAT == bench ]]; then
        local b="/bin/flexserve bench-e2e -m $ROOT/$MODEL --images $ROOT/$IMAGES"
        b+=" --prompt-tokens 32 --gen-tokens 64 --warm-reps 1"
        have flexserve && have images && echo "bench-guest timeout=1200 $b --mode guest"
        have flexserve && echo "bench-unprotected timeout=1200 $b --mode unprotected"
        return 0
    fi
    guest_env="FLEXSERVE_REQUIRE_KVM=1 FLEXSERVE_REQUIRE_MODELS=1 FLEXSERVE_IMAGES=$ROOT/$IMAGES"
    guest_env+=" FLEXSERVE_TARGET_DIR=$ROOT/target"
    if have e2e-tests && have images; then
        echo "e2e-boot timeout=900 $guest_env /tests/boot --test-threads=1"
        # In the protected VM, what pKVM changes: two vCPUs at once, a waiting vCPU, heap
        # chunks mapped and unmapped. A program's print and exit and a wild pointer are the
        # guest kernel's own, and e2e-boot sees both there; the deadline is the VMM's, as
        # e2e-boot checks in both kinds of VM. (Each test is a protected VM's boot: ~8 s.)
        local guest_tests=""
        [[ $mode == protected ]] && guest_tests="both_vcpus waiting_vcpu map_and_unmap"
        echo "e2e-guest timeout=900 $guest_env /tests/guest --test-threads=1 $guest_tests"
        echo "e2e-virtio-echo timeout=1500 $guest_env /tests/virtio_echo --test-threads=1"
        # A sealed request opens in the guest, its stop strings apply there and its answer
        # leaves sealed, in both kinds of VM. What the guest refuses and preemption are the
        # same code on both architectures: x86_64 runs those tests (make test-fast).
        echo "e2e-sealed-session timeout=900 $guest_env /tests/guest_sealed_session --test-threads=1 --exact a_sealed_chat_gives_the_plain_answer_sealed"
        if [[ $mode == protected ]]; then
            # A sealed model unseals (ARMv8 AES in the guest): in the protected VM, where it
            # matters (the guest code is the same in a normal VM). The load pipeline around
            # it is the same code on both architectures (x86_64 runs it).
            echo "e2e-sealed timeout=900 $guest_env /tests/guest_sealed --test-threads=1 --exact a_sealed_model_unseals_in_the_guest_and_generates_as_the_plaintext"
            # No prompt anywhere in the protected VM's memory (it is scanned once: reads
            # break it). Every lie about the pool refused is the guest's own code, the
            # same in both kinds of VM: the normal boot runs that.
            echo "e2e-prompt-scan timeout=900 $guest_env /tests/prompt_scan --test-threads=1 --nocapture --exact no_prompt_in_a_protected_vm"
            echo "e2e-host-cannot-read timeout=1500 $guest_env /tests/private_memory --test-threads=1 the_host_cannot_read"
            echo "e2e-protected-budget timeout=900 $guest_env /tests/memory_budget --test-threads=1 a_protected_vm_keeps_its_budget"
        else
            # A normal VM on 6.12 backs the pool with anonymous memory the host can read (so
            # no canary checks), but budgets, eviction and reclaim (MADV_DONTNEED) work.
            # Known failure, skipped until fixed: a shrink during a generation is not met
            # here before its deadline and the guest is stopped (docs/testing.md).
            echo "e2e-isolation timeout=900 $guest_env /tests/private_memory --test-threads=1 --skip the_host_cannot_read"
            echo "e2e-reclaim timeout=1800 $guest_env /tests/memory_budget --test-threads=1 --skip a_protected_vm --skip a_budget_change_during_a_generation"
            # No prompt in the boot region at each phase of a request, and every lie about
            # the pool refused.
            echo "e2e-prompt-scan timeout=900 $guest_env /tests/prompt_scan --test-threads=1 --skip no_prompt_in_a_protected_vm"
        fi
        # Four clients of the daemon (in the test process) batched in the guest, each
        # answered as alone: the engine's batched steps on the NEON column tiles, and in the
        # protected VM the batch's buffers in pinned memory. On the pKVM host the daemon's
        # guest must be a protected VM (FLEXSERVE_MIN_ISOLATION).
        local batch_env=$guest_env
        [[ $mode == protected ]] && batch_env+=" FLEXSERVE_MIN_ISOLATION=protected-vm"
        echo "e2e-batch timeout=900 $batch_env /tests/serve_batch --test-threads=1 --nocapture --exact tiny_model_clients_at_once_get_their_greedy_text_alone_while_batched"
        if have flexserve && [[ $mode == normal ]]; then
            # A sealed chat, whole and streamed, through the `flexserve proxy` binary to the
            # daemon (in the test process), by plain HTTP: the plain request's text, and the
            # daemon sees only sealed content. The normal boot only: the proxy and the
            # daemon are host code, and the guest's half of a sealed chat is
            # e2e-sealed-session's, in both kinds of VM (23 s of the protected boot).
            echo "e2e-proxy timeout=900 $guest_env FLEXSERVE_BIN=/bin/flexserve /tests/serve_proxy --test-threads=1 --exact the_proxy_binary_gives_the_plain_text_and_the_daemon_sees_only_sealed_content"
        fi
    fi
    have flexserve && have expected || return 0
    # On the pKVM host the guest must be a protected VM, not a normal one as a fallback.
    local isolation=""
    [[ $mode == protected ]] && isolation=--require-protected
    # The host engine does not depend on the mode: it runs in the normal boot. The protected
    # VM's output for one prompt says it computes as the normal VM does.
    for i in "${!PROMPTS[@]}"; do
        [[ $mode == protected && $i != 0 ]] && break
        (( i < ${ARM64_PROMPTS:-1} )) || break
        if [[ $mode == normal ]]; then
            echo "greedy-host-$i timeout=600 /init expect-output /expected/$i.txt $run --unprotected -n $GEN_TOKENS '${PROMPTS[$i]}'"
        fi
        if have images; then
            echo "greedy-guest-$i timeout=900 /init expect-output /expected/$i.txt $run $isolation -n $GEN_TOKENS '${PROMPTS[$i]}'"
        fi
    done
}

# --- boot each mode once --------------------------------------------------------------------

# One boot: the console goes to the terminal with a "[mode] " prefix (with ARM64_PARALLEL
# the modes interleave) and unprefixed to <mode>.log; the boot's seconds to <mode>.secs.
boot() {
    local mode=$1 s rc=0
    s=$(date +%s)
    # pipefail: the status is run-qemu's (sed does not fail).
    tools/arm64/run-qemu.sh "$mode" "$RUN/$mode.cpio" "$RUN/$mode.log" |
        sed -u "s/^/[$mode] /" || rc=$?
    echo $(($(date +%s) - s)) >"$RUN/$mode.secs"
    return "$rc"
}

status=0
beside=""
if [[ -n ${ARM64_BESIDE_BOOTS:-} ]]; then
    log "beside the boots (nice 19, output in $RUN/beside.log): $ARM64_BESIDE_BOOTS"
    nice -n 19 bash -c "$ARM64_BESIDE_BOOTS" >"$RUN/beside.log" 2>&1 &
    beside=$!
fi
pids=()
for mode in $MODES; do
    checks "$mode" | { grep -E "^(${ARM64_ONLY:-.*}) " || true; } >"$STAGE/checks"
    tools/arm64/mkinitramfs "$STAGE" "$RUN/$mode.cpio"
    log "$mode: booting ($(du -m "$RUN/$mode.cpio" | cut -f1) MiB initramfs, $(grep -c . "$STAGE/checks") checks)"
    if [[ ${ARM64_PARALLEL:-0} == 1 ]]; then
        boot "$mode" &
        pids+=($!)
    else
        boot "$mode" || status=1
    fi
done
for pid in "${pids[@]}"; do
    wait "$pid" || status=1
done
tq=$(date +%s)

for mode in $MODES; do
    log "$mode: $(tr -d '\r' <"$RUN/$mode.log" | grep -E '^(FLEXSERVE-ARM64|ARM64 CHECKS):' | tr '\n' ' ')($(cat "$RUN/$mode.secs") s)"
done
log "boots took $((tq - tb)) s"
if [[ -n $beside ]]; then
    # Its output either way: on success, what it checked; on failure, why.
    beside_status=0
    wait "$beside" || beside_status=$?
    cat "$RUN/beside.log"
    if [[ $beside_status == 0 ]]; then
        log "beside the boots: passed, $(($(date +%s) - tq)) s after the boots"
    else
        log "FAIL: beside the boots (status $beside_status): $ARM64_BESIDE_BOOTS"
        status=1
    fi
fi
if [[ $WHAT == bench ]]; then
    python3 tools/arm64/bench-report --model "$(basename $MODEL)" $(for m in $MODES; do echo "$m=$RUN/$m.log"; done) || status=1
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    log "FAIL: not built, so their checks did not run: ${missing[*]}"
    status=1
fi
log "total $(($(date +%s) - t0)) s: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
