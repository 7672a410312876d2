# The two commands of the README. Both work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install install-test system-deps bench clean

# 1. Install the tool and run the main job on a bundled trace.
demo: install
	$(BIN)/lvs-inspect audit fixtures/lab/dr-arp-leak-kernel/trace.pcapng -t fixtures/lab/dr-arp-leak-kernel/topology.toml --fail-on never

# 2. Install everything the tests need (Python packages and Debian's tshark, tcpdump,
#    nftables, iproute2) and run the whole suite.
test: system-deps install-test
	$(BIN)/python -m pytest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'

system-deps:
	./scripts/ensure-system-deps

bench: install-test
	$(BIN)/python bench/bench_decode.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
