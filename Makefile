# mpi_s2: set-up, demo, tests and benchmarks. `make demo` and `make test` work on a fresh Debian 12 machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
PY := $(abspath $(VENV))/bin/python
DEBIAN_PACKAGES := gdal-bin python3-gdal python3-mpi4py python3-h5py-mpi openmpi-bin python3-numpy python3-venv \
  python3-wheel python3-tifffile python3-matplotlib python3-tqdm python3-psycopg
# The test suite also starts a local Slurm cluster (tests/cluster/local-cluster.sh), nginx on 127.0.0.1 (the
# remote-input tests serve COGs with Range requests from it) and a PostgreSQL server on 127.0.0.1 (a campaign's
# status database): needed by `make test` only.
CLUSTER_PACKAGES := slurm-wlm munge iproute2 nginx postgresql
# the peer of make bench's time-series case: what a user would reach for instead (xarray + dask)
BENCH_PACKAGES := python3-xarray python3-dask python3-rioxarray nginx
# root needs --allow-run-as-root; more ranks than cores needs --oversubscribe (this machine has 2 cores)
MPIRUN := mpirun --allow-run-as-root --oversubscribe
MPI_TEST_TIMEOUT := 900
DEMO_DIR := demo
DEMO_SIZE := 4096
BENCH_DIR := bench-data
BENCH_SIZE := 10980
BENCH_REPEAT := 3
BENCH_CASES := all
# Scaling studies: rank counts, repetitions and input (defaults: a few minutes on 2 cores). SCHEDULER=slurm
# submits jobs/scaling-*.sbatch with sbatch --wait instead of running mpirun here (SBATCH_OPTIONS: e.g. -N 2).
SCALING_DIR := scaling
SCALING_RANKS := 1,2,3,4
SCALING_REPEAT := 1
SCALING_SIZE := 2048
SCALING_INPUT := jp2
SCALING_WINDOW := 512
SCALING_BACKEND := writer
SCHEDULER := local
SBATCH_OPTIONS :=
SCALING_ARGS = --ranks $(SCALING_RANKS) --dir $(SCALING_DIR) --size $(SCALING_SIZE) --repeat $(SCALING_REPEAT) \
  --input $(SCALING_INPUT) --window $(SCALING_WINDOW) --backend $(SCALING_BACKEND)
SCALING_MAX_RANKS = $(shell echo $(SCALING_RANKS) | tr ',' '\n' | sort -n | tail -n 1)

.PHONY: help system-deps venv demo test lint test-unit test-mpi test-slow test-fresh bench scaling-strong scaling-weak \
  scaling-report clean

help:
	@echo "make venv    - set up .venv: Debian packages (as root) and an editable install of mpi_s2"
	@echo "make demo    - set up .venv, make a synthetic scene, compose it with 3 MPI ranks"
	@echo "make test    - set up .venv, run ruff and mypy (make lint), then the whole test suite (unit, process, MPI)"
	@echo "make lint    - ruff check and mypy on the package (a finding fails; part of make test)"
	@echo "make test-slow - a real > 4 GB BigTIFF output (about a minute, 6 GB of disk; not in make test)"
	@echo "make test-fresh - as root: make demo and make test on a fresh Debian 12 root (debootstrap, chroot)"
	@echo "make bench   - full-size GeoTIFF tile, JPEG 2000 product, 2 x 2 mosaic (vs gdal_translate) and 6-date median (vs xarray + dask)"
	@echo "make scaling-strong / scaling-weak / scaling-report - scaling studies (CSV, plot, Markdown; SCHEDULER=slurm)"

# The Debian stack (GDAL, Open MPI, mpi4py, parallel h5py; wheel for pip's editable install) is installed when
# missing, as root. Without root, the goals that need it stop at once with one line: the command to run as root.
SYSTEM_GOALS := demo test lint test-unit test-mpi test-slow venv bench system-deps scaling-strong scaling-weak scaling-report
ifneq ($(filter $(SYSTEM_GOALS),$(or $(MAKECMDGOALS),$(.DEFAULT_GOAL))),)
ifneq ($(shell command -v dpkg-query),)
NEEDED_PACKAGES := $(DEBIAN_PACKAGES) $(if $(filter test test-unit,$(MAKECMDGOALS)),$(CLUSTER_PACKAGES)) \
                   $(if $(filter bench,$(MAKECMDGOALS)),$(BENCH_PACKAGES))
MISSING_PACKAGES := $(shell for p in $(NEEDED_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done)
ifneq ($(MISSING_PACKAGES),)
ifneq ($(shell id -u),0)
$(error missing Debian packages; as root run: apt-get update && apt-get install -y --no-install-recommends $(MISSING_PACKAGES))
endif
endif
endif
endif

system-deps:
	@if [ -n "$(MISSING_PACKAGES)" ]; then \
	  echo "installing Debian packages: $(MISSING_PACKAGES)"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(MISSING_PACKAGES); \
	fi

$(VENV)/.installed: pyproject.toml | system-deps
	test -x $(VENV)/bin/python || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	$(PY) -c "from osgeo import gdal; from mpi4py import MPI; import numpy, h5py" 
	touch $@

venv: system-deps $(VENV)/.installed

demo: venv
	$(PY) -m mpi_s2 synth $(DEMO_DIR)/scene --size $(DEMO_SIZE)
	$(MPIRUN) -n 3 $(PY) -m mpi_s2 compose --red $(DEMO_DIR)/scene/B04.tif --green $(DEMO_DIR)/scene/B03.tif \
	  --blue $(DEMO_DIR)/scene/B02.tif -o $(DEMO_DIR)/rgb.tif --overwrite --report $(DEMO_DIR)/run.json \
	  --quicklook $(DEMO_DIR)/rgb.png
	@echo "GeoTIFF: $(abspath $(DEMO_DIR))/rgb.tif   (run report: $(abspath $(DEMO_DIR))/run.json)"
	@echo "quicklook: $(abspath $(DEMO_DIR))/rgb.png"

# Checked habits first (ruff, mypy: a finding fails), then in-process MPI tests on 2 and 3 ranks (pytest-mpi; the
# session stops at once if the world is not MPI_S2_TEST_RANKS), then unit and process tests (these launch mpirun).
# A skipped test fails the run (tests/conftest.py); MPI_S2_ALLOW_SKIPS=1 is for pytest by hand, never for make.
unexport MPI_S2_ALLOW_SKIPS
test: venv lint test-mpi test-unit

lint: venv
	$(PY) -m ruff check mpi_s2 tests
	$(PY) -m mypy

# TESTS: the test files or folders test-unit runs (default: all; make test-fresh passes a representative part)
TESTS := tests
test-unit:
	$(PY) -m pytest --color=no --durations=15 -m "not mpi and not slow" $(TESTS)

# A real output past 4 GB (BigTIFF), minutes and 6 GB of disk: not part of make test (nor CI).
test-slow: venv
	$(PY) -m pytest --color=no -m slow tests

test-mpi:
	for n in 2 3; do \
	  MPI_S2_TEST_RANKS=$$n timeout $(MPI_TEST_TIMEOUT) $(MPIRUN) -n $$n $(PY) -m pytest --color=no --with-mpi -m mpi -q -p no:cacheprovider tests || exit 1; \
	done

# The README's set-up on a fresh Debian 12 (a debootstrap root built once under FRESH_DIR, then reused).
test-fresh:
	bash tests/fresh-debian.sh

bench: venv
	$(PY) -m mpi_s2.tools.benchmark --dir $(BENCH_DIR) --size $(BENCH_SIZE) --repeat $(BENCH_REPEAT) --case $(BENCH_CASES)

scaling-strong scaling-weak: scaling-%: venv
ifeq ($(SCHEDULER),slurm)
	sbatch --wait --ntasks=$(SCALING_MAX_RANKS) $(SBATCH_OPTIONS) jobs/scaling-$*.sbatch $(SCALING_ARGS)
else ifeq ($(SCHEDULER),local)
	$(PY) -m mpi_s2.scaling run $* $(SCALING_ARGS)
else
	$(error SCHEDULER must be local or slurm, not '$(SCHEDULER)')
endif

scaling-report: venv
	$(PY) -m mpi_s2.scaling report $(SCALING_DIR)

clean:
	rm -rf $(DEMO_DIR) $(BENCH_DIR) $(SCALING_DIR) .pytest_cache
