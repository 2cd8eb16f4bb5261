# The two commands of the README: `make demo` and `make test`. Each creates .venv if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean-results

$(BIN)/dse: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(BIN)/dse

demo: $(BIN)/dse
	$(BIN)/dse run

test: $(BIN)/dse
	$(BIN)/python -m pytest -q

clean-results:
	rm -rf results/* reports/*.html
