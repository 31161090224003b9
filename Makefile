# dicom-forwarder: the commands README.md names. `make test` is what CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS := dcmtk orthanc ctn pixelmed-apps libsystemd-dev pkg-config gcc python3-venv systemd systemd-container debootstrap

# `sudo make install` / `sudo make uninstall`: the service on a Debian/Ubuntu box
# (docs/operations.md). Only wheels are needed: the codecs, and cryptography for DER keys
# (tls); the systemd binding is optional (EXTRAS=codecs,tls,systemd builds it, which needs
# libsystemd-dev pkg-config gcc python3-dev).
INSTALL_VENV := /opt/dicom-forwarder
EXTRAS ?= codecs,tls
UNITDIR ?= /etc/systemd/system
CONFDIR ?= /etc/dicom-forwarder
SERVICE_USER := dicom-forwarder

.PHONY: deps venv test run check bench lint install uninstall

deps:            ## Debian packages the tests need (DCMTK, Orthanc, CTN, PixelMed, systemd, libsystemd headers)
	@missing=""; for p in $(DEBS); do \
	  [ "$$(dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null)" = installed ] || missing="$$missing $$p"; \
	done; \
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
	tests/test_negotiation.py tests/test_logs.py tests/test_spool.py tests/test_runtime_setup.py \
	tests/test_sendcore.py tests/test_startup.py tests/test_light_imports.py \
	tests/test_spool_migrate.py tests/test_headwalk.py tests/test_bench_report.py \
	tests/test_acse.py tests/test_reencode.py tests/test_inflating.py

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

install:         ## as root: the service (virtualenv in /opt/dicom-forwarder, unit, user, config)
	@[ "$$(id -u)" = 0 ] || { echo "run it as root: sudo make install" >&2; exit 1; }
	@python3 -c 'import ensurepip' 2>/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv; }
	[ -x $(INSTALL_VENV)/bin/python ] || python3 -m venv $(INSTALL_VENV)
	@# build from a copy: nothing root-owned is left in this checkout; the second pip
	@# call replaces the package even when its version did not change (an upgrade from git)
	src=$$(mktemp -d) && trap 'rm -rf "$$src"' EXIT && \
	  cp -r pyproject.toml README.md forwarder "$$src"/ && \
	  $(INSTALL_VENV)/bin/python -m pip install -q --upgrade "$$src[$(EXTRAS)]" && \
	  $(INSTALL_VENV)/bin/python -m pip install -q --force-reinstall --no-deps "$$src"
	ln -sfn $(INSTALL_VENV)/bin/dicom-forwarder /usr/local/bin/dicom-forwarder
	install -m644 systemd/dicom-forwarder.service systemd/dicom-forwarder@.service $(UNITDIR)/
	install -D -m644 systemd/dicom-forwarder.sysusers /etc/sysusers.d/dicom-forwarder.conf
	install -D -m644 systemd/dicom-forwarder.tmpfiles /etc/tmpfiles.d/dicom-forwarder.conf
	systemd-sysusers /etc/sysusers.d/dicom-forwarder.conf
	systemd-tmpfiles --create /etc/tmpfiles.d/dicom-forwarder.conf
	install -d -m750 -g $(SERVICE_USER) $(CONFDIR)
	@# an existing configuration is never overwritten (upgrades keep it)
	@if [ ! -e $(CONFDIR)/forwarder.yaml ]; then \
	  sed -e 's|^spool: ./var/spool |spool: /var/lib/dicom-forwarder|' \
	      -e 's|path: ./var/incoming|path: /srv/dicom/incoming|' etc/forwarder.yaml \
	    > $(CONFDIR)/forwarder.yaml.new && \
	  ! grep -nE '^[^#]*\./var/' $(CONFDIR)/forwarder.yaml.new && \
	  chgrp $(SERVICE_USER) $(CONFDIR)/forwarder.yaml.new && \
	  chmod 640 $(CONFDIR)/forwarder.yaml.new && \
	  mv $(CONFDIR)/forwarder.yaml.new $(CONFDIR)/forwarder.yaml && \
	  echo "installed $(CONFDIR)/forwarder.yaml (watch /srv/dicom/incoming, spool /var/lib/dicom-forwarder)"; \
	else echo "kept $(CONFDIR)/forwarder.yaml"; fi
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload && \
	  for u in $$(systemctl list-units --plain --no-legend --state=active 'dicom-forwarder*.service' | cut -d' ' -f1); do \
	    echo "restarting $$u (upgrade)"; systemctl try-restart "$$u"; done; fi
	@echo "next: edit $(CONFDIR)/forwarder.yaml (destinations, routes), then"
	@echo "  sudo -u $(SERVICE_USER) dicom-forwarder check-config -c $(CONFDIR)/forwarder.yaml"
	@echo "  sudo systemctl enable --now dicom-forwarder"

uninstall:       ## as root: remove the service; keeps the configuration and the spool (PURGE=1 removes them too)
	@[ "$$(id -u)" = 0 ] || { echo "run it as root: sudo make uninstall" >&2; exit 1; }
	-@if [ -d /run/systemd/system ]; then \
	  for u in $$(systemctl list-units --all --plain --no-legend 'dicom-forwarder*.service' | cut -d' ' -f1) \
	           $$(systemctl list-unit-files --plain --no-legend 'dicom-forwarder*.service' | cut -d' ' -f1); do \
	    case "$$u" in *@.service) ;; *) systemctl disable --now "$$u" 2>/dev/null;; esac; done; fi
	rm -f $(UNITDIR)/dicom-forwarder.service $(UNITDIR)/dicom-forwarder@.service
	rm -f /etc/sysusers.d/dicom-forwarder.conf /etc/tmpfiles.d/dicom-forwarder.conf
	rm -f /usr/local/bin/dicom-forwarder
	rm -rf $(INSTALL_VENV)
	-@[ -d /run/systemd/system ] && systemctl daemon-reload && systemctl reset-failed 'dicom-forwarder*' 2>/dev/null; true
	@if [ "$(PURGE)" = 1 ]; then \
	  echo "PURGE=1: removing $(CONFDIR), drop-ins, the spools /var/lib/dicom-forwarder*, and the user"; \
	  rm -rf $(CONFDIR) /var/lib/dicom-forwarder /var/lib/dicom-forwarder-* $(UNITDIR)/dicom-forwarder*.service.d; \
	  rmdir /srv/dicom/incoming /srv/dicom 2>/dev/null; \
	  userdel $(SERVICE_USER) 2>/dev/null; groupdel $(SERVICE_USER) 2>/dev/null; true; \
	else echo "kept $(CONFDIR), drop-ins in $(UNITDIR), the spools /var/lib/dicom-forwarder* (files not yet delivered) and the user; PURGE=1 removes them"; fi
