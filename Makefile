# Two commands on a fresh machine: `make run` and `make test`.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# The Pythons we claim (pyproject's classifiers; the Docker image runs one of them):
# `make test` runs the suite on each. `make test PYTHONS=3.12` runs one.
PYTHONS ?= 3.11 3.12 3.13
# pyenv keeps interpreters here; its shims on PATH run only the versions it has selected.
PYENV_ROOT ?= $(HOME)/.pyenv

.PHONY: run test test-quick lint venv tools bench soak check-config schema docs clean FORCE

# Who an interpreter is: a venv's python reports its base interpreter's prefix.
WHO := import sys; print("Python", sys.version.split()[0], "at", sys.base_prefix)

# $(VENV) holds $(PYTHON) with the package: `make run` installs only what the gateway
# needs at run time ($(BIN)/.installed); `make test` and `lint` add the dev tools
# (mypy, ruff, pytest: $(BIN)/.installed-dev). The venv is made again when it was made
# by another interpreter (another version, or one since removed), which would otherwise
# keep failing until `make clean`; and reinstalled when pyproject.toml changes.
venv: $(BIN)/.installed-dev
$(BIN)/.installed: FORCE
	@want="$$($(PYTHON) -c '$(WHO)')" || { echo "$(PYTHON) does not run" >&2; exit 1; }; \
	have="$$($(BIN)/python -c '$(WHO)' 2>/dev/null)"; \
	if [ "$$want" = "$$have" ] && [ $@ -nt pyproject.toml ]; then exit 0; fi; \
	if [ "$$want" != "$$have" ]; then \
	  if [ -d $(VENV) ]; then echo "$(VENV) was made by $${have:-an interpreter that no longer runs}, not $(PYTHON) ($$want): making it again"; fi; \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) || exit 1; \
	fi; \
	set -e; \
	$(BIN)/python -m pip install --quiet --upgrade pip; \
	$(BIN)/python -m pip install --quiet -e .; \
	touch $@

# The dev tools on top; installed again whenever the runtime install above was redone
# (a new venv, or a changed pyproject.toml, whose dev list may have changed too).
$(BIN)/.installed-dev: $(BIN)/.installed FORCE
	@if [ $@ -nt $(BIN)/.installed ]; then exit 0; fi; \
	set -e; \
	$(BIN)/python -m pip install --quiet -e '.[dev]'; \
	touch $@

# The first runnable python$(1) (e.g. 3.12): on PATH, else the newest under pyenv.
find_python = for p in "$$(command -v python$(1))" $$(ls -d $(PYENV_ROOT)/versions/$(1).*/bin/python$(1) 2>/dev/null | sort -rV); do \
	  [ -n "$$p" ] && "$$p" -c 'import sys; sys.exit("%d.%d" % sys.version_info[:2] != sys.argv[1])' $(1) 2>/dev/null \
	    && { echo "$$p"; break; }; \
	done; true

## Start the gateway on config.example.yaml in front of the built-in demo upstream.
run: $(BIN)/.installed
	@test -f demo-keys/jwks.json || $(BIN)/gateway keys generate --dir demo-keys >/dev/null
	@TOKEN=$$($(BIN)/gateway tokens issue --config config.example.yaml --client demo-client \
	    --scopes "orders:read" --audience demo-api --ttl 1h 2>/dev/null); \
	echo "gateway on http://127.0.0.1:8080 - try:"; \
	echo "  curl -i http://127.0.0.1:8080/health"; \
	echo "  curl -i 'http://127.0.0.1:8080/catalog/items?page=2'"; \
	echo "  curl -i http://127.0.0.1:8080/orders/7                 # 401: a token is required"; \
	echo "  curl -i -H 'Authorization: Bearer $$TOKEN' http://127.0.0.1:8080/orders/7"; \
	echo "  curl -i http://127.0.0.1:8080/nowhere                  # 404: no route"; \
	echo "  curl -i 'http://127.0.0.1:8080/catalog/a%2Fb'          # 400: encoded slash"; \
	echo "  curl -i http://127.0.0.1:8080/.well-known/api-tokens/jwks.json"; \
	echo "  curl -s http://127.0.0.1:9901/metrics | grep gateway_requests_total"; \
	echo "Ctrl-C stops it."
	exec $(BIN)/gateway run --config config.example.yaml --demo-upstream

## Lint, type-check, then run the suite on every claimed Python installed here (each in
## its own .venv-3.X; the one $(PYTHON) is reuses .venv). A claimed Python that is missing
## is reported; in CI (CI set, and not 0 or false) it fails the run.
test: lint tools
	@tested=; missing=; failed=; \
	for v in $(PYTHONS); do \
	  py=$$($(call find_python,$$v)); \
	  if [ -z "$$py" ]; then missing="$$missing $$v"; continue; fi; \
	  venv=.venv-$$v; \
	  if [ "$$("$$py" -c '$(WHO)')" = "$$($(BIN)/python -c '$(WHO)')" ]; then venv=$(VENV); fi; \
	  $(MAKE) --no-print-directory venv PYTHON="$$py" VENV=$$venv || exit 1; \
	  echo "== pytest on $$($$venv/bin/python -V) ($$venv)"; \
	  PATH="$(abspath $(TOOLS))/bin:$$PATH" $$venv/bin/pytest && tested="$$tested $$v" || failed="$$failed $$v"; \
	done; \
	echo "== passed on:$${tested:- none}$${failed:+; FAILED on:$$failed}$${missing:+; not found (not tested):$$missing}"; \
	[ -n "$$tested$$failed" ] || { echo "none of the claimed Pythons ($(PYTHONS)) was found" >&2; exit 1; }; \
	case "$${CI:-}" in ""|0|false) ;; *) [ -z "$$missing" ] || { echo "CI: every claimed Python must be installed" >&2; exit 1; };; esac; \
	[ -z "$$failed" ]

## The quick loop while developing: lint, type-check, and the suite on $(PYTHON) only.
test-quick: lint tools
	PATH="$(abspath $(TOOLS))/bin:$$PATH" $(BIN)/pytest

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check gateway tests
	$(BIN)/ruff format --check gateway tests
	$(BIN)/mypy gateway tests

## External programs the tests use: promtool checks the metrics exposition. Debian has
## no promtool package; it ships in `prometheus`, the whole server (about 19 MB to
## download, 96 MB installed, a dozen JavaScript packages, a system user and a service
## that starts). So nothing is installed: `apt-get download` fetches that one .deb (no
## root needed) and only its /usr/bin/promtool is extracted into $(TOOLS)/bin, which
## the test targets put first on PATH. Without it the promtool tests skip, except in CI,
## where they fail (tests/metrics_parse.py).
TOOLS ?= .tools
tools:
	@command -v promtool >/dev/null 2>&1 || [ -x $(TOOLS)/bin/promtool ] || { \
	  if command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then \
	    echo "fetching promtool into $(TOOLS)/bin (extracted from Debian's prometheus .deb; nothing is installed)"; \
	    tmp=$$(mktemp -d) && (cd $$tmp && apt-get download prometheus >/dev/null 2>&1) \
	      && dpkg-deb -x $$tmp/prometheus_*.deb $$tmp/x \
	      && mkdir -p $(TOOLS)/bin && cp $$tmp/x/usr/bin/promtool $(TOOLS)/bin/promtool \
	      || echo "promtool could not be fetched (apt-get download prometheus failed): the promtool tests will skip (and fail in CI)"; \
	    rm -rf $$tmp; \
	  else \
	    echo "promtool is not installed and cannot be fetched here (needs apt-get): the promtool tests will skip (and fail in CI)"; \
	  fi; }

## Benchmark against nginx (installs wrk and nginx from Debian's packages if missing).
bench: $(BIN)/.installed-dev
	$(BIN)/python bench/run.py

## Soak: 10 minutes of mixed load at 80 % of the measured maximum (bench/README.md);
## not part of `make test`. `make soak SOAK_ARGS="--minutes 1"` for a short run.
soak: $(BIN)/.installed-dev
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

check-config: $(BIN)/.installed
	$(BIN)/gateway check --config config.example.yaml

schema: $(BIN)/.installed
	$(BIN)/gateway schema > docs/policy.schema.json

## docs/config.md's key tables, rendered again from the policy model's descriptions
## (tests/unit/test_config_reference.py fails when the committed file differs).
docs: $(BIN)/.installed
	$(BIN)/gateway schema --update-docs docs/config.md

clean:
	rm -rf $(VENV) $(VENV)-3.* $(TOOLS) .mypy_cache .ruff_cache .pytest_cache *.egg-info
