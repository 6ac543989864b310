"""Shared test fixtures: the llama.cpp vocab folder and the default model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/synth.py and friends


def vocab_dir() -> Path | None:
    env = os.environ.get("REALM_VOCAB_DIR")
    path = Path(env) if env else ROOT.parent / "shared" / "vocab"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def vocab() -> Path:
    """Folder with llama.cpp's vocab-only GGUFs; skipped when absent unless REALM_REQUIRE_VOCAB=1 (CI)."""
    path = vocab_dir()
    if path is None:
        if os.environ.get("REALM_REQUIRE_VOCAB") == "1":
            pytest.fail("REALM_REQUIRE_VOCAB=1 but the vocab folder (../shared/vocab or $REALM_VOCAB_DIR) is missing")
        pytest.skip("llama.cpp vocab folder not found (set REALM_VOCAB_DIR)")
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
