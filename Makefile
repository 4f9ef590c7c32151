# Two entry points that work from a fresh clone: `make demo` and `make test`.
# Both (re)create a local virtualenv in .venv with the CPU build of torch.
# GPU machines: `make TORCH_SPEC=torch venv` (or install a CUDA torch first), then `pip install -e '.[vllm]'`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/asyncopd demo configs/default.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/sim_scale.py

clean:
	rm -rf $(VENV) runs .pytest_cache
