"""ModelStore: every model once, memory-mapped and still quantized, shared by all guests (tenants).

Ids are consumer-chosen (0 < id < 2^63) or content-derived (the first 8 bytes of the file's SHA-256,
top bit cleared). The same content stored twice is one copy; one id never names two contents.
Holders (guests) take references; `remove` waits for the last holder. Reads are accounted per
model and per holder, with optional per-holder quotas. Sits beside `engines/`, feeds `host.abi`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable

from realm.errors import GGUFError, RealmError, StoreError

log = logging.getLogger("realm.host")

MAX_ID = (1 << 63) - 1
HASH_BLOCK = 4 << 20  # bytes hashed per read
DEFAULT_MAX_IMAGE_BYTES = 1 << 30  # largest GGUF image a guest may store


class NoModelError(StoreError):
    """No model with that id (or not one the holder holds)."""


class IdConflictError(StoreError):
    """The id is already used by different content."""


class QuotaError(StoreError):
    """A holder's read quota or model-count limit is exhausted."""


class BadModelError(StoreError):
    """A GGUF image handed to the store is malformed."""


# (realpath, size, mtime_ns) -> sha256 digest; shared by every store of the process
_hash_cache: dict[tuple[str, int, int], bytes] = {}
_hash_lock = threading.Lock()


def file_digest(path: str | os.PathLike) -> bytes:
    """SHA-256 of a file, hashed in 4 MB blocks and remembered by (path, size, mtime_ns)."""
    p = os.path.realpath(path)
    st = os.stat(p)
    key = (p, st.st_size, st.st_mtime_ns)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    value = digest.digest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


def content_id(digest: bytes) -> int:
    """The content-derived id: first 8 bytes of the SHA-256, big-endian, top bit cleared (never 0)."""
    return int.from_bytes(digest[:8], "big") & MAX_ID or 1


def _check_id(model_id: int) -> int:
    if isinstance(model_id, bool) or not isinstance(model_id, int) or not 0 < model_id <= MAX_ID:
        raise StoreError(f"model id must be an integer in [1, 2^63), got {model_id!r}")
    return model_id


@dataclass(eq=False)
class StoredModel:
    """One stored copy: the mapped GGUF, the ids naming it, its holders and its accounting."""

    gguf: Any  # realm.gguf.GGUFFile
    digest: bytes
    source: Path | None
    pinned: bool  # added by a consumer: stays until remove(); guest-stored images go with their last holder
    ids: set[int] = field(default_factory=set)
    holders: dict[Hashable, int] = field(default_factory=dict)  # holder -> reference count
    removed: bool = False
    closed: bool = False
    bytes_served: int = 0

    def __post_init__(self):
        tensors = self.gguf.tensors
        self.handles = {name: i for i, name in enumerate(tensors)}  # name -> handle (file order)
        self.tensor_bytes = sum(int(t.n_bytes) for t in tensors.values())
        self.mapped_bytes = int(self.gguf.buffer.nbytes)
        self._config = None

    def config(self):
        """`ModelConfig.from_gguf` of this model, computed once (raises ConfigError/UnsupportedError)."""
        if self._config is None:
            from realm.config import ModelConfig

            self._config = ModelConfig.from_gguf(self.gguf)
        return self._config


@dataclass
class _Holder:
    max_read_bytes: int | None = None
    max_models: int | None = None
    bytes_read: int = 0


class ModelStore:
    """A thread-safe store of mapped GGUF models shared by guests; see the module docstring.

    Parameters
    ----------
    max_image_bytes : largest GGUF image `add_image` (a guest's `realm_store_model`) accepts.
    """

    def __init__(self, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        self.max_image_bytes = int(max_image_bytes)
        self._lock = threading.Lock()
        self._by_id: dict[int, StoredModel] = {}
        self._by_digest: dict[bytes, StoredModel] = {}
        self._holders: dict[Hashable, _Holder] = {}

    # -- adding ----------------------------------------------------------------------------------

    def add(self, source, model_id: int | None = None, *, holder: Hashable | None = None,
            pin: bool = True) -> int:
        """Store a model from a path, a bytes-like GGUF image or an open GGUFFile; return its id.

        `model_id` None derives the id from the content. With `holder`, the holder also gets a
        reference (atomically). `pin=False` (needs a holder) frees the model with its last holder.
        Raises GGUFError for a malformed file, IdConflictError, QuotaError.
        """
        if model_id is not None:
            _check_id(model_id)
        if not pin and holder is None:
            raise StoreError("an unpinned model needs a holder")
        path = getattr(source, "path", None) if not isinstance(source, (str, os.PathLike)) else Path(source)
        if path is not None:
            path = Path(path)
            digest = file_digest(path)
            opener = lambda: _open_gguf(path)  # noqa: E731
        else:
            data = _image_bytes(source)
            digest = hashlib.sha256(data).digest()
            opener = lambda: _open_gguf(data)  # noqa: E731
        mid, _ = self._insert(digest, opener, path, model_id, holder, pin)
        return mid

    def add_image(self, data: bytes, model_id: int | None = None, *, holder: Hashable) -> tuple[int, StoredModel]:
        """Store a GGUF image handed over by a guest (a private copy), referenced by `holder`.

        The image is parsed even when its content is already stored (the same work, and so the
        same timing class, whether or not another tenant holds it). It never revives a model the
        consumer removed: the holder then shares the removed copy, freed with its last holder.
        Raises BadModelError (malformed or too large), IdConflictError, QuotaError.
        """
        if model_id is not None:
            _check_id(model_id)
        if len(data) > self.max_image_bytes:
            raise QuotaError(f"GGUF image of {len(data)} bytes exceeds the store's limit {self.max_image_bytes}")
        data = bytes(data)
        digest = hashlib.sha256(data).digest()
        try:
            gguf = _open_gguf(data)
        except (GGUFError, RealmError, ValueError) as e:
            raise BadModelError(f"malformed GGUF image: {e}") from e
        used = []

        def opener():
            used.append(True)
            return gguf

        try:
            return self._insert(digest, opener, None, model_id, holder, pin=False, revive=False)
        finally:
            if not used:  # the content was already stored: this parse only validated it
                gguf.close()

    def _insert(self, digest, opener, path, model_id, holder, pin, revive=True) -> tuple[int, StoredModel]:
        mid = model_id if model_id is not None else content_id(digest)
        with self._lock:
            entry = self._existing(digest, mid)
            if entry is not None:
                return mid, self._adopt(entry, mid, holder, pin, revive)
        gguf = opener()  # parse and map outside the lock
        try:
            entry = StoredModel(gguf=gguf, digest=digest, source=path, pinned=pin)
        except Exception:
            gguf.close()
            raise
        with self._lock:
            existing = self._existing(digest, mid)  # another thread may have won the race
            if existing is not None:
                gguf.close()
                return mid, self._adopt(existing, mid, holder, pin, revive)
            self._by_digest[digest] = entry
            try:
                return mid, self._adopt(entry, mid, holder, pin)
            finally:
                if not entry.ids:  # the holder's quota refused it: nothing refers to it
                    del self._by_digest[digest]
                    entry.closed = True
                    gguf.close()

    def _existing(self, digest: bytes, mid: int) -> StoredModel | None:
        """The stored copy of `digest`, after checking `mid` names no other content (lock held)."""
        named = self._by_id.get(mid)
        if named is not None and named.digest != digest:
            raise IdConflictError(f"model id {mid} is already used by different content")
        return self._by_digest.get(digest)

    def _adopt(self, entry: StoredModel, mid: int, holder, pin: bool, revive: bool = True) -> StoredModel:
        """Name `entry` `mid`, take `holder`'s reference; lock held.

        `revive`: a consumer storing removed content again revives it; a guest's image does not.
        """
        if holder is not None:
            self._take(entry, holder)
        entry.ids.add(mid)
        self._by_id[mid] = entry
        if pin:
            entry.pinned = True
        if revive:
            entry.removed = False
        return entry

    # -- references --------------------------------------------------------------------------------

    def acquire(self, model_id: int, holder: Hashable) -> StoredModel:
        """Give `holder` a reference to a stored (not removed) model."""
        with self._lock:
            entry = self._by_id.get(model_id)
            if entry is None or entry.removed:
                raise NoModelError(f"no model with id {model_id}")
            self._take(entry, holder)
            return entry

    def _take(self, entry: StoredModel, holder) -> None:
        h = self._holders.setdefault(holder, _Holder())
        if holder not in entry.holders and h.max_models is not None:
            held = sum(1 for e in self._by_digest.values() if holder in e.holders)
            if held >= h.max_models:
                raise QuotaError(f"holder {holder!r} already holds {held} model(s), its limit")
        entry.holders[holder] = entry.holders.get(holder, 0) + 1

    def release(self, model_id: int, holder: Hashable) -> None:
        """Drop one of `holder`'s references; frees the model if it was removed (or unpinned) and unused."""
        with self._lock:
            entry = self._by_id.get(model_id)
            if entry is None or holder not in entry.holders:
                raise NoModelError(f"holder {holder!r} holds no model with id {model_id}")
            entry.holders[holder] -= 1
            if entry.holders[holder] <= 0:
                del entry.holders[holder]
            closing = self._maybe_close(entry)
        if closing is not None:
            closing.close()

    def release_all(self, holder: Hashable) -> None:
        """Drop every reference of `holder` (a guest that goes away) and forget its limits."""
        closing = []
        with self._lock:
            for entry in list(self._by_digest.values()):
                if entry.holders.pop(holder, None) is not None:
                    gguf = self._maybe_close(entry)
                    if gguf is not None:
                        closing.append(gguf)
            self._holders.pop(holder, None)
        for gguf in closing:
            gguf.close()

    def remove(self, model_id: int) -> None:
        """Remove a model: no new references; freed when its last holder lets go."""
        with self._lock:
            entry = self._by_id.get(model_id)
            if entry is None or entry.removed:
                raise NoModelError(f"no model with id {model_id}")
            entry.removed = True
            closing = self._maybe_close(entry)
        if closing is not None:
            closing.close()

    def _maybe_close(self, entry: StoredModel):
        """Unlink a removed/unpinned model without holders; return its GGUFFile to close (lock held)."""
        if entry.holders or entry.closed or (entry.pinned and not entry.removed):
            return None
        entry.closed = True
        for mid in entry.ids:
            if self._by_id.get(mid) is entry:
                del self._by_id[mid]
        if self._by_digest.get(entry.digest) is entry:
            del self._by_digest[entry.digest]
        log.debug("store: closed model %s", sorted(entry.ids))
        return entry.gguf

    # -- lookups, limits, accounting ---------------------------------------------------------------

    def get(self, model_id: int) -> StoredModel:
        """The stored model `model_id` (not removed); NoModelError otherwise."""
        with self._lock:
            entry = self._by_id.get(model_id)
            if entry is None or entry.removed:
                raise NoModelError(f"no model with id {model_id}")
            return entry

    def gguf(self, model_id: int):
        """The mapped GGUFFile of a model (valid while the model is stored; do not close it)."""
        return self.get(model_id).gguf

    def __contains__(self, model_id: int) -> bool:
        with self._lock:
            entry = self._by_id.get(model_id)
            return entry is not None and not entry.removed

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(mid for mid, e in self._by_id.items() if not e.removed)

    def holders(self, model_id: int) -> dict[Hashable, int]:
        with self._lock:
            entry = self._by_id.get(model_id)
            return dict(entry.holders) if entry is not None else {}

    def set_limits(self, holder: Hashable, *, max_read_bytes: int | None = None,
                   max_models: int | None = None) -> None:
        """Per-holder quotas: total bytes it may read, models it may hold at once (None: unlimited)."""
        with self._lock:
            h = self._holders.setdefault(holder, _Holder())
            h.max_read_bytes, h.max_models = max_read_bytes, max_models

    def charge(self, model_id: int, holder: Hashable, n_bytes: int) -> None:
        """Account `n_bytes` served to `holder` from `model_id`; QuotaError when over its quota."""
        with self._lock:
            h = self._holders.get(holder)
            if h is None:
                h = self._holders[holder] = _Holder()
            if h.max_read_bytes is not None and h.bytes_read + n_bytes > h.max_read_bytes:
                raise QuotaError(f"holder {holder!r} exceeded its read quota of {h.max_read_bytes} bytes")
            h.bytes_read += n_bytes
            entry = self._by_id.get(model_id)
            if entry is not None:
                entry.bytes_served += n_bytes

    def holder_stats(self, holder: Hashable) -> dict[str, Any]:
        with self._lock:
            h = self._holders.get(holder, _Holder())
            models = [sorted(e.ids)[0] for e in self._by_digest.values() if holder in e.holders]
            return {"bytes_read": h.bytes_read, "models": models, "max_read_bytes": h.max_read_bytes,
                    "max_models": h.max_models}

    def stats(self) -> dict[str, Any]:
        """Copies, mapped bytes, and bytes served per model and per holder."""
        with self._lock:
            entries = list(self._by_digest.values())
            return {
                "n_models": sum(1 for e in entries if not e.removed),
                "n_copies": len(entries),
                "mapped_bytes": sum(e.mapped_bytes for e in entries),
                "bytes_served": sum(e.bytes_served for e in entries),
                "models": {
                    min(e.ids): {"ids": sorted(e.ids), "bytes_served": e.bytes_served,
                                 "mapped_bytes": e.mapped_bytes, "tensor_bytes": e.tensor_bytes,
                                 "holders": len(e.holders), "removed": e.removed, "pinned": e.pinned,
                                 "source": str(e.source) if e.source else None}
                    for e in entries
                },
                "holders": {repr(k): h.bytes_read for k, h in self._holders.items()},
            }

    def close(self) -> None:
        """Unmap everything (only when no guest runs any more)."""
        with self._lock:
            entries = list(self._by_digest.values())
            self._by_id.clear()
            self._by_digest.clear()
            self._holders.clear()
            for e in entries:
                e.closed = True
        for e in entries:
            e.gguf.close()


def _open_gguf(source):
    from realm.gguf import GGUFFile

    return GGUFFile(source)


def _image_bytes(source) -> bytes:
    """A private copy of a GGUF image given as bytes, a buffer, or a path-less GGUFFile."""
    buffer = getattr(source, "buffer", None)
    if buffer is not None:
        return bytes(memoryview(buffer))
    if isinstance(source, (bytes, bytearray, memoryview)) or hasattr(source, "__buffer__"):
        return bytes(source)
    try:
        return bytes(memoryview(source))
    except TypeError:
        raise StoreError(f"cannot store a model from {type(source).__name__}") from None


_default: ModelStore | None = None
_default_lock = threading.Lock()


def default_store() -> ModelStore:
    """The process-wide store shared by every WasmEngine that is not given one."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ModelStore()
        return _default
