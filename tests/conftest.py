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


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep files worth looking at after the run (screenshots): $REALM_TEST_ARTIFACTS, else
    test-artifacts/ in the checkout (git-ignored); each test overwrites its own file."""
    path = Path(os.environ.get("REALM_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- guest runtimes -----------------------------------------------------------------------------------
# Runtime-neutral guest tests take the `wasm_runtime` fixture (e.g. `pytestmark =
# pytest.mark.usefixtures("wasm_runtime")`): they run once per runtime of realm.host.runtime.RUNTIMES,
# with that runtime as the default of every Guest/WasmEngine they make. `--runtime wasmer` (or
# wasmtime) runs only that one and fails if it is not installed; by default a runtime that is not
# installed here (wasmer on CPython 3.11+) is skipped, saying why.


def pytest_addoption(parser):
    parser.addoption("--runtime", default="all", choices=("all", "wasmtime", "wasmer"),
                     help="guest runtime(s) for the runtime-neutral wasm tests (default: all installed)")


def pytest_generate_tests(metafunc):
    if "wasm_runtime" in metafunc.fixturenames:
        from realm.host.runtime import RUNTIMES

        chosen = metafunc.config.getoption("--runtime")
        names = RUNTIMES if chosen == "all" else (chosen,)
        metafunc.parametrize("wasm_runtime", names, indirect=True, scope="module")


@pytest.fixture(scope="module")
def wasm_runtime(request):
    """The runtime name; every Guest made meanwhile without an explicit runtime uses it."""
    from realm.host import runtime

    name = request.param
    why = runtime.unavailable_reason(name)
    if why is not None:
        if request.config.getoption("--runtime") == name:
            pytest.fail(f"--runtime {name} was asked for, but {why}")
        pytest.skip(f"{name} runtime not available on Python {sys.version.split()[0]}: {why}")
    saved, runtime.default_runtime = runtime.default_runtime, name
    yield name
    runtime.default_runtime = saved
