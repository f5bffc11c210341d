# ovs-service: one target per test lane, plus lint, bench, packaging and the demo.
# Debian's own Python and Debian's packages; see .ci/run for a fresh machine.

PYTHON ?= /usr/bin/python3
PYTEST_ARGS ?=
PYTEST = $(PYTHON) -m pytest

# Everything the full suite needs on a fresh Debian 12 (CI runs `make install-deps`).
APT_PACKAGES = \
	openvswitch-switch \
	python3 python3-pip python3-setuptools python3-wheel python3-all \
	python3-typer python3-pystemd python3-pyroute2 python3-sdnotify python3-pytest \
	libsystemd-dev pkg-config gcc build-essential \
	iproute2 iputils-ping iptables nftables procps \
	systemd dbus \
	debhelper dh-python pybuild-plugin-pyproject lintian \
	qemu-system-x86 busybox-static cpio kmod \
	bash-completion ca-certificates time \
	prometheus-node-exporter prometheus python3-yaml \
	mmdebstrap \
	ansible-core ansible-lint openssh-server openssh-client
PIP_TOOLS = ruff mypy

DEB_WORK = .cache/deb
# The venv lane: the project and the newest PyPI releases of its dependencies.
VENV = .cache/venv-pypi
FAST = not slow and not systemd and not vm and not upgrade and not fleet and not hitless

.PHONY: all test test-half-vm test-vm-lanes test-hitless-ci test-half-host test-fast test-kmod-crash test-unit test-ovs test-lanes test-systemd test-kmod test-upgrade \
	test-fleet test-hitless test-venv lint lint-ansible bench deb demo \
	install-packages install-deps clean

all: test

# The whole suite: what CI and the README run. Two halves at once, each in its
# own pytest: the VM lanes (qemu's software emulation keeps one core busy)
# beside everything else (mostly waiting on daemons, systemd and dpkg). Each
# half's output is printed whole when it ends; both run to the end, and the
# target fails when either does.
test:
	@$(MAKE) --no-print-directory -j2 --keep-going --output-sync=target test-half-vm test-half-host

# The VM half of make test: the harness, force-reload-kmod, the package
# install lane and two of the kernel-module crash lane's kills (one with the
# restore pending, then recover; one the units' hooks restore after); then CI's
# share of the hitless lanes, summary last: on Debian 12, one try each of
# ovs-service restart and systemctl restart openvswitch (ovs-service's
# units), and one force-reload-kmod pair against the stock script. The rest
# (the crash lane's other kills, the hitless lanes' repeats, the reinstall and
# the stock restarts under Debian's units, the Debian 13 hitless lane) runs
# with make test-kmod-crash and make test-hitless: together over an hour of
# software emulation on a shared 2-core machine, beyond CI's budget.
test-half-vm:
	@$(MAKE) --no-print-directory -j1 --keep-going test-vm-lanes test-hitless-ci

test-vm-lanes:
	$(PYTEST) -m "vm and not hitless and not exhaustive" $(PYTEST_ARGS)

# CI's share of the hitless lanes, its figures and summary apart from a full
# run's (.cache/hitless-ci).
test-hitless-ci:
	@$(MAKE) --no-print-directory test-hitless HITLESS_REPEAT=1 HITLESS_PAIRS=1 \
		HITLESS_DEBIAN_UNITS=0 HITLESS_SELECT="hitless and not exhaustive" \
		HITLESS_RESULTS=.cache/hitless-ci

# The other half: everything without a VM. (The venv lane runs after both
# halves, away from the VM half's timed lanes.)
test-half-host:
	$(PYTEST) -p no:cacheprovider -m "not vm and not hitless" $(PYTEST_ARGS)

test-fast:
	$(PYTEST) -m "$(FAST)" $(PYTEST_ARGS)

# By cost: no root; a private Open vSwitch; systemd, VM and package lanes.
test-unit:
	$(PYTEST) tests/unit $(PYTEST_ARGS)

test-ovs:
	$(PYTEST) tests/ovs $(PYTEST_ARGS)

test-lanes:
	$(PYTEST) tests/lanes $(PYTEST_ARGS)

test-systemd:
	$(PYTEST) -m systemd $(PYTEST_ARGS)

test-kmod:
	$(PYTEST) -m vm $(PYTEST_ARGS)

# force-reload-kmod killed at every step, then recover (one guest, 30 to 55 minutes).
test-kmod-crash:
	$(PYTEST) tests/lanes/test_kmod_crash_lane.py $(PYTEST_ARGS)

# Other Debian releases in mmdebstrap roots (cached in .cache/roots, rebuilt
# when stale): the Debian 13 lane and the real 3.1 -> 3.5 upgrade. -s: the
# lanes print the versions on each side, lines kept, the gap, the rollback.
test-upgrade:
	$(PYTEST) -m upgrade -s $(PYTEST_ARGS)

# The Ansible collection (ansible/): ansible-core over SSH to three systemd hosts.
test-fleet:
	$(PYTEST) -m fleet $(PYTEST_ARGS)
# The kernel-datapath hitless lanes (one VM each); the summary is the last line,
# also when a lane fails (its exit status is kept). Each restart path
# HITLESS_REPEAT times and HITLESS_PAIRS force-reload-kmod pairs (empty: each
# lane's own default), Debian's units left out with HITLESS_DEBIAN_UNITS=0,
# the lanes HITLESS_SELECT picks (pytest -m), figures in HITLESS_RESULTS.
HITLESS_REPEAT ?=
HITLESS_PAIRS ?=
HITLESS_DEBIAN_UNITS ?=
HITLESS_SELECT ?= hitless
HITLESS_RESULTS ?= .cache/hitless
test-hitless:
	rm -f $(HITLESS_RESULTS)/*.json
	$(if $(HITLESS_REPEAT),OVS_SERVICE_HITLESS_REPEAT=$(HITLESS_REPEAT)) \
	$(if $(HITLESS_PAIRS),OVS_SERVICE_HITLESS_PAIRS=$(HITLESS_PAIRS)) \
	$(if $(HITLESS_DEBIAN_UNITS),OVS_SERVICE_HITLESS_DEBIAN_UNITS=$(HITLESS_DEBIAN_UNITS)) \
	OVS_SERVICE_HITLESS_RESULTS=$(HITLESS_RESULTS) \
		$(PYTEST) -m "$(HITLESS_SELECT)" -s $(PYTEST_ARGS); status=$$?; \
		$(PYTHON) -m tests.lanes.hitless_summary $(HITLESS_RESULTS); exit $$status

# `pip install .` into a fresh venv with the newest releases from PyPI (pystemd
# builds from source against libsystemd-dev), then the CLI from / and the fast
# tests with that interpreter (-P: the checkout is not on its path; the tests
# that run the CLI as a command run the installed console scripts or the
# checkout's code with these libraries).
test-venv:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-cache-dir --upgrade pip
	$(VENV)/bin/pip install --quiet --no-cache-dir --upgrade ".[test]"
	@echo "venv lane: $$($(VENV)/bin/python --version), newest PyPI releases:"
	@$(VENV)/bin/pip list --format=freeze | grep -iE '^(typer|click|pystemd|pyroute2|sdnotify|pytest|mypy|ruff)=='
	cd / && $(CURDIR)/$(VENV)/bin/ovs-service --version
	cd / && $(CURDIR)/$(VENV)/bin/ovs-service --help >/dev/null
	$(VENV)/bin/python -P -m pytest -p no:cacheprovider -m "$(FAST)" $(PYTEST_ARGS)

lint: lint-ansible
	$(PYTHON) -m ruff check ovs_service tests bench demo
	$(PYTHON) -m mypy

# ansible-lint needs the collection under ansible_collections/NAMESPACE/NAME.
ANSIBLE_WORK = .cache/ansible
lint-ansible:
	rm -rf $(ANSIBLE_WORK) && mkdir -p $(ANSIBLE_WORK)/ansible_collections/ovs_service
	ln -s $(CURDIR)/ansible $(ANSIBLE_WORK)/ansible_collections/ovs_service/fleet
	cd ansible && ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(ANSIBLE_WORK) ansible-lint --nocolor
	$(PYTHON) -m ruff check ansible

bench:
	$(PYTHON) -m bench.run

# Build the binary package in a scratch copy, so the tree stays clean.
deb:
	@test -d packaging/debian || { echo "packaging/debian is missing" >&2; exit 1; }
	rm -rf $(DEB_WORK)
	mkdir -p $(DEB_WORK)/src dist
	tar -cf - --exclude=./.git --exclude=./.cache --exclude=./dist --exclude=./build \
		--exclude='*.egg-info' --exclude=__pycache__ . | tar -xf - -C $(DEB_WORK)/src
	rm -rf $(DEB_WORK)/src/debian
	cp -a packaging/debian $(DEB_WORK)/src/debian
	cd $(DEB_WORK)/src && dpkg-buildpackage -us -uc -b
	cp $(DEB_WORK)/*.deb dist/
	@ls -l dist/*.deb

# The live demo; demo.sh runs install-packages first when a tool it needs is missing.
demo:
	PYTHON=$(PYTHON) ./demo.sh

# Debian's packages only: all the demo needs (it runs the checkout's own code).
install-packages:
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES)

install-deps: install-packages
	$(PYTHON) -m pip install --break-system-packages $(PIP_TOOLS)
	$(PYTHON) -m pip install --break-system-packages --no-deps -e .

clean:
	rm -rf .cache build dist .pytest_cache .mypy_cache .ruff_cache bench/out
	rm -rf *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
