# faceverify — every target does its own set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test serve train evaluate clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

serve: $(STAMP)
	@echo "faceverify service: not built yet (issue 3). Train and evaluate with 'make train' / 'make evaluate'."; exit 1

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
