# The two commands of README.md. Both need root (the lab boots systemd-nspawn hosts).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST_PACKAGES := debootstrap systemd-container iptables nginx-light pebble openssl openssh-client curl

.PHONY: demo test test-unit venv host-tools demo-down bench

$(BIN)/pyinfra: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# pyinfra never writes bytecode (sys.dont_write_bytecode), and an editable install compiles
# nothing: without this every run compiled the deploy's modules again (~0.1 s of CPU).
# Quick when nothing changed; pip install (not -e) compiles by itself.
venv: $(BIN)/pyinfra
	@$(BIN)/python -m compileall -q aisha_infra tasks >/dev/null

# Tools the lab and the tests use on this machine (nginx only for `nginx -t`).
host-tools:
	@missing=""; for p in $(HOST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "Installing host tools:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		systemctl disable --now nginx >/dev/null 2>&1 || true; \
	fi

# 1. Demo: boot one local Debian host, provision it, print health and the webhook URL.
LAB ?= demo

demo: venv host-tools
	$(BIN)/aisha-infra lab up --name $(LAB) --count 1
	AISHA_LAB=$(LAB) $(BIN)/pyinfra -y inventory.py deploy.py
	@echo "Lab host stays up: 'make demo-down' removes it."

demo-down: venv
	$(BIN)/aisha-infra lab down --name $(LAB)

# 2. Tests: unit tests, then end-to-end on lab hosts (what .ci/run runs).
test: venv host-tools
	$(BIN)/pytest -q tests/unit tests/e2e

test-unit: venv
	$(BIN)/pytest -q tests/unit

bench: venv host-tools
	$(BIN)/python bench/run.py
