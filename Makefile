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

# $(VENV) holds $(PYTHON) with the package and its dev tools. It is made again when it
# was made by another interpreter (another version, or one since removed), which would
# otherwise keep failing until `make clean`; and reinstalled when pyproject.toml changes.
venv: $(BIN)/.installed
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
	  $$venv/bin/pytest && tested="$$tested $$v" || failed="$$failed $$v"; \
	done; \
	echo "== passed on:$${tested:- none}$${failed:+; FAILED on:$$failed}$${missing:+; not found (not tested):$$missing}"; \
	[ -n "$$tested$$failed" ] || { echo "none of the claimed Pythons ($(PYTHONS)) was found" >&2; exit 1; }; \
	case "$${CI:-}" in ""|0|false) ;; *) [ -z "$$missing" ] || { echo "CI: every claimed Python must be installed" >&2; exit 1; };; esac; \
	[ -z "$$failed" ]

## The quick loop while developing: lint, type-check, and the suite on $(PYTHON) only.
test-quick: lint tools
	$(BIN)/pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check gateway tests
	$(BIN)/ruff format --check gateway tests
	$(BIN)/mypy gateway tests

## External programs the tests use: promtool (Debian package `prometheus`) checks
## the metrics exposition. Installed when missing, where we may (root with apt-get).
tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing promtool (Debian package prometheus)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null 2>&1 \
	      || echo "promtool could not be installed: the promtool test will skip"; \
	  else \
	    echo "promtool is not installed and cannot be installed here (needs root and apt-get): the promtool test will skip"; \
	  fi; }

## Benchmark against nginx (installs wrk and nginx from Debian's packages if missing).
bench: $(BIN)/.installed
	$(BIN)/python bench/run.py

## Soak: 10 minutes of mixed load at 80 % of the measured maximum (bench/README.md);
## not part of `make test`. `make soak SOAK_ARGS="--minutes 1"` for a short run.
soak: $(BIN)/.installed
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
	rm -rf $(VENV) $(VENV)-3.* .mypy_cache .ruff_cache .pytest_cache *.egg-info
