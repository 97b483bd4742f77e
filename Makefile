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

.PHONY: env env-lerobot demo lint test test-integration test-lerobot bench clean

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

# LeRobot SmolVLA checkpoints (the lerobot_smolvla policy family) in a separate Python 3.11 venv.
# torchao stays out of it: lerobot imports diffusers (< 0.36 there), which breaks on the torchao that
# vlatrim quantize needs (torchao.dtypes.NF4Tensor is gone); the quantization tests skip in this venv.
# lerobot 0.4.4 is the last release for Python 3.11; it pins torch < 2.11 and transformers < 5, but
# its SmolVLA runs on the torch 2.14.1 / torchvision 0.29.1 wheels that lie on this machine, so
# lerobot goes in with --no-deps and the few packages SmolVLA needs are named explicitly (docs/lerobot.md).
# Nothing is fetched from a model hub.
LEROBOT_PYTHON ?= python3.11
LEROBOT_VENV ?= .venv-lerobot
LPY := $(LEROBOT_VENV)/bin/python
LEROBOT_STAMP := $(LEROBOT_VENV)/.vlatrim-installed
LEROBOT_PINS := torch==2.14.1 torchvision==0.29.1
LEROBOT_EXTRAS := transformers==4.57.1 "huggingface-hub>=0.34.2,<0.36" "diffusers<0.36" pyserial num2words \
  "datasets>=4,<5" "draccus==0.10.0" einops jsonlines deepdiff termcolor av accelerate

env-lerobot: $(LEROBOT_STAMP)

$(LEROBOT_STAMP): pyproject.toml
	[ -x $(LPY) ] || $(LEROBOT_PYTHON) -m venv $(LEROBOT_VENV)
	$(LPY) -m pip install -q --upgrade pip
	$(LPY) -m pip install -q $(LEROBOT_PINS)
	$(LPY) -m pip install -q --no-deps lerobot==0.4.4
	$(LPY) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	  print('\n'.join(d for d in p['dependencies'] + p['optional-dependencies']['test'] \
	                  if not d.startswith(('torch', 'transformers'))))" > $(LEROBOT_VENV)/vlatrim-requirements.txt
	$(LPY) -m pip install -q $(LEROBOT_PINS) $(LEROBOT_EXTRAS) -r $(LEROBOT_VENV)/vlatrim-requirements.txt
	$(LPY) -m pip install -q --no-deps -e .
	@touch $(LEROBOT_STAMP)

# The LeRobot tests, then the default suite, in the LeRobot venv (transformers 4.57).
test-lerobot: $(LEROBOT_STAMP)
	$(LPY) -m pytest -q tests/lerobot
	$(LPY) -m pytest -q --ignore=tests/lerobot

clean:
	rm -rf $(VENV) $(LEROBOT_VENV) demo_out .pytest_cache
