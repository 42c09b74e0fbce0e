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

# The service on the default weights (weights/faceverify-mfn.safetensors; FACEVERIFY_* settings
# from the environment, see docs/api.md). `make serve HOST=0.0.0.0 PORT=9000` to change the bind.
HOST ?= 127.0.0.1
PORT ?= 8000
serve: $(STAMP)
	$(PY) -m uvicorn app.main:app --host $(HOST) --port $(PORT) --no-access-log

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
