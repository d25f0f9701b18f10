# Two commands: `make demo` (the main job on the embedded default) and `make test` (`make test-fast`: the tier
# for the edit-test loop, without the tests marked slow). All create or update the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pytest-xdist workers: two let the Slurm tests (mostly waiting) overlap the rest; more only share the same cores
TEST_WORKERS ?= 2

.PHONY: setup demo test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

demo: setup
	PY=$(PY) bash sweeps/demo.sh

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow" tests

clean:
	rm -rf runs
