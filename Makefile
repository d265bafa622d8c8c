# Two commands do everything on a fresh machine:
#   make train   set up, then train the default job (Fashion-MNIST, fused LARS, CPU)
#   make test    set up, then run the tests
# Set-up = Debian packages (Open MPI, Fashion-MNIST), .venv with pinned deps,
# Horovod built from source, and this package's extension (CUDA when nvcc is present).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export CUDA_HOME ?= $(shell [ -d /usr/local/cuda/bin ] && echo /usr/local/cuda)
export MAX_JOBS ?= 2

SYSTEM := $(VENV)/.system-packages
DEPS := $(VENV)/.deps-installed
HOROVOD := $(VENV)/.horovod-installed
BUILT := $(VENV)/.extension-built
CSRC := $(shell find csrc -type f)

.PHONY: setup check test test-suite test-cpu-builds wheel-test train bench convergence mutation emulator-coverage clean

setup: $(BUILT) $(HOROVOD)

$(SYSTEM): scripts/install_system.sh
	bash scripts/install_system.sh
	@mkdir -p $(VENV) && touch $@

$(DEPS): requirements.txt $(SYSTEM)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	touch $@

$(BUILT): $(DEPS) setup.py pyproject.toml lars_cuda/_version.py $(CSRC)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

$(HOROVOD): $(DEPS) scripts/install_horovod.sh
	bash scripts/install_horovod.sh $(PY)
	touch $@

# The tests in layers (docs/testing.md): tests/unit (the package, in-process, seconds),
# tests/integration (subprocesses, two ranks, the CUDA emulator, builds, examples),
# tests/trainer (the trainer, checkpoints, multi-host); tests/support holds helpers.
UNIT := tests/unit

# The fast loop (~1 minute on 2 cores): lint and the unit layer, from a set-up
# checkout (no apt, no Horovod; the extension is rebuilt first if csrc/ changed).
check: $(BUILT)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(UNIT)

# make test = the whole suite, the unit layer again on every CPU build below
# this machine's best (AVX-512 machines: avx2 and default; AVX2-only: default),
# and the wheel test.
test: test-suite test-cpu-builds wheel-test

test-suite: setup
	$(PY) -m pytest -q

# Our builds are chosen with LARS_CUDA_CPU_KERNEL alone. ATEN_CPU_CAPABILITY would
# mask torch's own instruction set too, and torch's inductor generates wrong code
# (AVX2 masked on an AVX-512 CPU) or fails to compile (default) under such a mask
# (issue 33), so the torch.compile tests would test torch, not our builds.
test-cpu-builds: setup
	@for build in $$($(PY) -m tests.support.machine --builds-below-best); do \
		echo "== the unit tests on the $$build build of the CPU kernel"; \
		LARS_CUDA_CPU_KERNEL=$$build $(PY) -m pytest -q $(UNIT) || exit 1; \
	done

# Build the wheel, install it into a fresh venv with only torch and the test
# requirements, run the package's tests against site-packages (scripts/wheel_test.sh).
wheel-test: setup
	bash scripts/wheel_test.sh $(PY) $(UNIT)

# The seed's 1K row (base lr 2^2.5, warmup 10/2^5 epochs) on Fashion-MNIST: ResNet-20,
# fused LARS, 4 epochs on the CPU (~7 min on 2 cores). Logs, TensorBoard events,
# checkpoints and learning_curves.png land in runs/fashion-mnist.
train: setup
	$(PY) train/imagenet.py --dataset fashion-mnist --model cifar_resnet20 --base-op lars \
		--optimizer-impl fused --bn-bias-separately --batch-size 1024 --val-batch-size 1000 --epochs 4 \
		--base-lr 5.656854 --warmup-epochs 0.3125 --wd 5e-4 --workers 0 --dist none \
		--log-dir runs/fashion-mnist

bench: setup
	$(PY) benchmarks/bench_step.py
	$(PY) benchmarks/bench_sharded.py
	$(PY) benchmarks/bench_sharded.py --optimizer lamb
	$(PY) benchmarks/bench_flavours.py
	$(PY) benchmarks/bench_lamb.py --dtype float32,bfloat16

convergence: setup
	$(PY) benchmarks/convergence.py --sweep

# Mutation testing (not in CI: ~10 min on 2 cores): mutmut over lars_cuda/ and the
# trainer's checkpoint code (setup.cfg), then the hand mutations of the C++ kernels.
# OMP_NUM_THREADS=1: mutmut forks its workers, and a forked OpenMP pool hangs.
mutation: setup
	$(PIP) install -q mutmut==3.8.1
	rm -rf mutants
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children 2 || true
	$(VENV)/bin/mutmut results --all true > mutmut-results.txt; $(PY) scripts/mutation_report.py mutmut-results.txt
	$(PY) scripts/hand_mutations.py

# Line coverage of the CUDA device code by the emulated kernel's tests (gcov; ~5 min).
emulator-coverage: setup
	$(PY) scripts/emulator_coverage.py

clean:
	rm -rf build dist .wheel-test *.egg-info lars_cuda/*.so lars_cuda/_build_info.json
