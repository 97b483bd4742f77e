import os

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
# One torch thread in this process and in the processes tests start (the verbs take OMP_NUM_THREADS as
# the user's choice instead of measuring the free cores), so results do not depend on the machine's load.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

# Tiny-model tests are dominated by per-op overhead; one intra-op thread is faster on a 2-core
# machine and keeps parallel test runs from oversubscribing it.
torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny random Llama saved as a transformers directory (shared by the prune CLI tests)."""
    from vlatrim.models.adapters.tiny import TINY_MODELS

    d = tmp_path_factory.mktemp("src") / "llama"
    TINY_MODELS.get("llama")().save_pretrained(d)
    return d


@pytest.fixture(autouse=True)
def _vlatrim_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Device peaks measured by bench tests are cached in a temporary directory, not the user's cache."""
    monkeypatch.setenv("VLATRIM_CACHE_DIR", str(tmp_path_factory.mktemp("vlatrim-cache")))  # one per test
