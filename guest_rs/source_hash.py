"""Print the SOURCE_HASH of the guest crate and the metadata crate (guest_rs/meta/): sha256 over their
sources (rule documented in build.sh).

Files: Cargo.toml, Cargo.lock (if present), build.sh, source_hash.py, src/**/*.rs, meta/Cargo.toml,
meta/Cargo.lock, meta/*.py and meta/src/**/*.rs, paths relative to guest_rs/ with '/' separators,
sorted by UTF-8 bytes; for each: path + b"\\0" + content + b"\\0".
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

TOP_LEVEL = ("Cargo.toml", "Cargo.lock", "build.sh", "source_hash.py", "meta/Cargo.toml", "meta/Cargo.lock")


def source_files(crate: Path) -> list[str]:
    """Relative paths of the hashed files, sorted."""
    names = [n for n in TOP_LEVEL if (crate / n).is_file()]
    for folder, pattern in (("src", "*.rs"), ("meta/src", "*.rs")):
        names += [p.relative_to(crate).as_posix() for p in (crate / folder).rglob(pattern) if p.is_file()]
    if (crate / "meta").is_dir():
        names += [p.relative_to(crate).as_posix() for p in (crate / "meta").glob("*.py") if p.is_file()]
    return sorted(names, key=lambda n: n.encode("utf-8"))


def source_hash(crate: Path) -> str:
    """Hex sha256 of the crate's sources by the rule above."""
    h = hashlib.sha256()
    for name in source_files(crate):
        h.update(name.encode("utf-8") + b"\0")
        h.update((crate / name).read_bytes() + b"\0")
    return h.hexdigest()


if __name__ == "__main__":
    crate = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    print(source_hash(crate))
