# dicom-forwarder: the commands README.md names. `make test` is what CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS := dcmtk orthanc ctn libsystemd-dev pkg-config gcc python3-venv systemd

.PHONY: deps venv test run check bench lint

deps:            ## Debian packages the tests need (DCMTK, Orthanc, libsystemd headers)
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed  ## the virtualenv with the package, its codecs, systemd and test extras

$(VENV)/.installed: pyproject.toml
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[systemd,codecs,test]'
	touch $@

# The fast lane: pure and unit tests, no daemon, no peers, no slow marker.
UNIT_TESTS := tests/test_outcome.py tests/test_settle_router.py tests/test_config.py \
	tests/test_negotiation.py tests/test_logs.py tests/test_spool.py tests/test_pdnpatch.py

test: deps venv lint  ## set up and run the whole test suite (lint and types included)
	$(PY) -m pytest -q

check: venv lint ## the edit loop: lint, types, pure and unit tests (under two minutes)
	$(PY) -m pytest -q -m 'not slow' $(UNIT_TESTS)

run: venv        ## set up and run the daemon on etc/forwarder.yaml, with a local storage SCP to send to
	mkdir -p var/incoming var/received
	@echo "drop DICOM files into ./var/incoming; they arrive in ./var/received (Ctrl-C stops)"
	$(PY) -m forwarder check-config -c etc/forwarder.yaml
	$(PY) -m forwarder receive --port 11112 --output var/received & rx=$$!; \
	trap 'kill $$rx 2>/dev/null; wait $$rx' EXIT INT TERM; \
	$(PY) -m forwarder run -c etc/forwarder.yaml --log-target stderr

lint: venv
	$(VENV)/bin/ruff check forwarder tests bench
	$(VENV)/bin/mypy forwarder

bench: deps venv ## benchmarks against DCMTK storescu; prints a table, writes bench/results/latest.md
	$(PY) bench/run.py
