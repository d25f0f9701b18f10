# Two commands: `make demo` (the main job on the embedded default) and `make test`.
# Both create or update the virtual environment from requirements.txt first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

demo: setup
	PY=$(PY) bash sweeps/demo.sh

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf runs
