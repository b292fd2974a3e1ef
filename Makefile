# certdrop — the two set-up commands of the README:
#   make run    install into .venv, create the demo CA on first run, run the daemon on config/certdrop.toml
#   make test   install into .venv (with test extras, PostgreSQL's driver and the Debian peers), run the whole test suite

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG := config/certdrop.toml
# Debian packages the tests talk to as real peers (installed only when missing; needs root)
# as command:package pairs, so a peer already present (a JRE from elsewhere, say) is not reinstalled;
# PostgreSQL's server commands are probed where Debian keeps them (tests/pgserver.py starts one)
DEB_TEST_PEERS := openssl:openssl apache2:apache2 curl:curl pk12util:libnss3-tools \
                  certtool:gnutls-bin keytool:default-jre-headless systemd-analyze:systemd \
                  initdb:postgresql
PEER_PATH := /usr/sbin:/sbin$(foreach d,$(wildcard /usr/lib/postgresql/*/bin),:$(d))

.PHONY: run test venv test-deps lint bench clean

$(BIN)/certdrop: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,metrics,postgresql,serve]'
	touch $@

venv: $(BIN)/certdrop

run: venv
	@test -f .state/ca.cer || $(BIN)/certdrop --config $(CONFIG) init
	$(BIN)/certdrop --config $(CONFIG) run

test-deps:
	@missing=""; for pair in $(DEB_TEST_PEERS); do \
	  cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	  PATH="$$PATH:$(PEER_PATH)" command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# the package's bytecode written once: every certdrop a test starts would compile it again
# (an editable install has none, and PYTHONDONTWRITEBYTECODE may be set)
test: venv test-deps
	$(BIN)/ruff check daemon tests $(wildcard bench)
	$(BIN)/python -m compileall -q daemon >/dev/null
	$(BIN)/python -m pytest -q -n auto

lint: venv
	$(BIN)/ruff check daemon tests $(wildcard bench)
	$(BIN)/ruff format --check daemon tests $(wildcard bench)
	$(BIN)/mypy

# the benchmark suite (certdrop vs its peers, one table): make bench BENCH_ARGS="--quick"
bench: venv
	bench/run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .state build *.egg-info
