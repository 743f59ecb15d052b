# The two commands of the README: `make demo` and `make test`. Both install what is missing
# (Debian packages), configure, build and generate the fixture models first.
BUILD ?= build
JOBS ?= $(shell nproc)
# make bench: the generated models' sizes (bench/make_models.py: s 19M parameters, m 56M, l 207M,
# xl 1.1B; SIZE@fp32 checks one as an fp32-only port, e.g. BENCH_SIZES="s m xl@fp32" BENCH_REPEATS=1)
BENCH_SIZES ?= s m
BENCH_REPEATS ?= 3
# Another LibTorch than Debian's 1.13 (docs/build.md): its CMake prefix, e.g. a pip torch's
# `python -c "import torch; print(torch.utils.cmake_prefix_path)"`, and a Python with that torch
# for the fixtures and the exporter; best in a build directory of its own (BUILD=build-torch2).
TORCH_PREFIX ?=
TORCH_PYTHON ?=
CMAKE_FLAGS := $(if $(TORCH_PREFIX),-DCMAKE_PREFIX_PATH=$(TORCH_PREFIX)) $(if $(TORCH_PYTHON),-DTORCH_PYTHON=$(TORCH_PYTHON))
PKGS := cmake ninja-build g++ pkg-config libtorch-dev libluajit-5.1-dev nlohmann-json3-dev \
        libfmt-dev doctest-dev python3-torch libopenblas0-pthread time libxml2-utils chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The user's stack (make test-modern): a virtual environment of the project's own under
# $(MODERN)/venv with these pins from PyPI (torch's Linux wheel is a CUDA build: about 2.9 GB of
# wheels with its nvidia-* ones, kept in pip's own cache, ~/.cache/pip), parity built against
# that torch's LibTorch in $(MODERN) and the whole suite run on it, fixtures made with that torch.
MODERN ?= build-modern
MODERN_PINS ?= torch==2.15.0 transformers==5.24.0 safetensors==0.8.0 numpy==2.4.6
MODERN_PY := $(abspath $(MODERN))/venv/bin/python

.PHONY: all deps build test test-asan test-modern modern-venv demo bench clean

all: build

deps:
	@missing=$$(for p in $(PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing: $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	@cat $(BUILD)/fuzz/run_*/summary.txt 2>/dev/null || echo "fuzz: not run (no clang++ with libFuzzer here)"

# The whole suite built with AddressSanitizer + UndefinedBehaviorSanitizer (gcc), in build-asan/.
test-asan: deps
	cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPARITY_SANITIZE=ON -DPARITY_FUZZ=OFF
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(JOBS)

$(MODERN_PY):
	python3 -m venv $(MODERN)/venv

modern-venv: $(MODERN_PY)
	$(MODERN_PY) -m pip install -q --disable-pip-version-check $(MODERN_PINS)

test-modern: deps modern-venv
	$(MAKE) test BUILD=$(MODERN) TORCH_PYTHON=$(MODERN_PY) \
	  TORCH_PREFIX="$$($(MODERN_PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"

# the main job: a check of a fixture port of another structure with a planted bug (an RMSNorm eps
# ten times too large, inside the bf16 noise): divergent, its first divergence and cause; exit 1
# is what it must give, anything else fails the demo
demo: build
	@echo '$$ parity check $(BUILD)/fixtures/reference $(BUILD)/fixtures/bug_eps_small'
	@./$(BUILD)/parity check $(BUILD)/fixtures/reference $(BUILD)/fixtures/bug_eps_small --quiet \
	  --out $(BUILD)/demo-results; rc=$$?; [ $$rc -eq 1 ] || { echo "demo: expected the divergent verdict (exit 1), got exit $$rc"; exit 1; }

bench: build
	./$(BUILD)/parity run bench/metrics.lua
	./$(BUILD)/parity run bench/logits.lua
	./$(BUILD)/parity run bench/patches.lua $(BUILD)/fixtures/reference
	/usr/bin/python3 bench/make_models.py $(BUILD)/bench_models $(BENCH_SIZES)
	PARITY_BIN=$(abspath $(BUILD)/parity) ./$(BUILD)/parity run bench/harness.lua $(BUILD)/bench_models \
	  $(BUILD)/bench.json $(BENCH_REPEATS) $(BENCH_SIZES)

clean:
	rm -rf $(BUILD) build-asan $(MODERN)
