# Two commands do all set-up on a fresh Debian 12 machine:  `make demo`  and  `make test`.
# Both create .venv in the repo root, install the Debian packages and the project into it, then run.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEB_PACKAGES := libosmesa6 libusb-1.0-0
PIP := $(PY) -m pip install --disable-pip-version-check -q
export MUJOCO_GL ?= osmesa

.PHONY: demo test lint bench install clean

install: $(STAMP)

$(STAMP): setup.py Makefile
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[ml,sim,dev,geometry]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/perception-nodes demo --out demo_out

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) bench/bench_replay.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache *.egg-info
