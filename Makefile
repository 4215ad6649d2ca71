# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test venv tools bench check-config schema clean FORCE

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

## Lint, type-check and run the whole test suite.
test: $(BIN)/.installed tools
	$(BIN)/ruff check gateway tests
	$(BIN)/ruff format --check gateway tests
	$(BIN)/mypy gateway tests
	$(BIN)/pytest

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

check-config: $(BIN)/.installed
	$(BIN)/gateway check --config config.example.yaml

schema: $(BIN)/.installed
	$(BIN)/gateway schema > docs/policy.schema.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
