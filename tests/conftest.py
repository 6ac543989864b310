"""Shared test fixtures: the llama.cpp vocab folder and the default model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/synth.py and friends


def llama_cpp_data() -> Path | None:
    """llama.cpp's test data extracted by tests/fetch_data.py ($REALM_TESTDATA_DIR overrides), or None."""
    import fetch_data

    env = os.environ.get("REALM_TESTDATA_DIR")
    path = Path(env) if env else fetch_data.data_dir()
    return path if fetch_data.is_complete(path) or (env and path.is_dir()) else None


def vocab_dir() -> Path | None:
    env = os.environ.get("REALM_VOCAB_DIR")
    if env:
        return Path(env) if Path(env).is_dir() else None
    data = llama_cpp_data()
    return data / "models" if data is not None else None


def _require(what: str) -> None:
    msg = f"{what} not found: run `python tests/fetch_data.py` (llama.cpp's test data, pinned, cached)"
    if os.environ.get("REALM_REQUIRE_VOCAB") == "1":
        pytest.fail(f"REALM_REQUIRE_VOCAB=1 but {msg}")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def vocab() -> Path:
    """Folder with llama.cpp's vocab-only GGUFs and their .inp/.out test vectors."""
    path = vocab_dir()
    if path is None:
        _require("llama.cpp's vocab files")
    return path


@pytest.fixture(scope="session")
def llama_cpp_testdata() -> Path:
    """Root of llama.cpp's extracted test data: models/ (vocabs), models/templates/*.jinja,
    tests/test-chat-template.cpp."""
    path = llama_cpp_data()
    if path is None:
        _require("llama.cpp's test data")
    return path


@pytest.fixture(scope="session")
def default_model() -> Path:
    """Path of the default model's GGUF (installed from PyPI with the `model` extra)."""
    from realm.errors import ModelNotFoundError
    from realm.models import default_model_path

    try:
        return default_model_path()
    except ModelNotFoundError as e:
        if os.environ.get("REALM_REQUIRE_MODEL") == "1":
            pytest.fail(str(e))
        pytest.skip(str(e))
