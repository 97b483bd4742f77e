# Two entry points that work on a fresh machine: `make demo` and `make test`.
# The environment lives in $(VENV); it is created on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vlatrim-installed
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: env demo lint test test-integration bench clean

env: $(STAMP)

# A torch the user already has (importable by $(PYTHON)) is reused through system site packages and
# never replaced; otherwise the pinned CPU wheel is installed first, so no dependency can pull a
# multi-GB CUDA build.
$(STAMP): pyproject.toml
	@if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	  echo "vlatrim: reusing the torch of $(PYTHON)"; \
	  [ -x $(PY) ] || $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  [ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip; \
	  $(PY) -c "import torch" >/dev/null 2>&1 || $(PY) -m pip install -q torch==$(TORCH_VERSION); \
	fi
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m vlatrim.demo --out demo_out

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: lint
	$(PY) -m pytest -q

test-integration: $(STAMP)
	$(PY) -m pytest -q -m integration

bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) demo_out .pytest_cache
