"""Strict GGUF v2/v3 reader over a read-only mmap (or a bytes image); never dequantizes.

First stage of the data flow: file -> GGUFFile (header, metadata, tensor index, all validated
against the bytes actually present) -> ModelConfig / Tokenizer / engines. Format facts from
https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/src/gguf.cpp (layout, checks) and
https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/include/ggml.h (GGML_MAX_NAME, GGML_MAX_DIMS).
"""

from __future__ import annotations

import enum
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from realm.errors import ConfigError, GGUFError, ModelNotFoundError
from realm.quants import GGMLType, block_size_and_bytes

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"

MAX_KEY_BYTES = 65535  # a key is an identifier; anything longer is corrupt
MAX_TENSOR_NAME_BYTES = 63  # ggml's GGML_MAX_NAME (64) includes the terminating NUL
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 3  # an array of arrays of arrays, no deeper
# Caps on objects per file, far above real models (~50 keys, ~1-2k tensors, no nested arrays), so a
# small hostile file cannot make the reader build millions of Python objects.
MAX_KV = 1 << 20
MAX_TENSORS = 1 << 20
MAX_NESTED_ARRAYS = 1 << 20  # arrays inside arrays, summed over the file
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


class GGUFValueType(enum.IntEnum):
    """Metadata value type ids, named like gguf-py's GGUFValueType."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# The one table of fixed-size value types: struct format == little-endian NumPy dtype.
_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<B",  # one byte, 0 or 1
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_SCALARS = {t: struct.Struct(fmt) for t, fmt in _SCALAR_FORMATS.items()}
_DTYPES = {t: np.dtype(fmt) for t, fmt in _SCALAR_FORMATS.items()}
_INT_TYPES = frozenset({GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
                        GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64})
_FLOAT_TYPES = frozenset({GGUFValueType.FLOAT32, GGUFValueType.FLOAT64})
_VALUE_TYPE_IDS = frozenset(int(t) for t in GGUFValueType)

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# Smallest possible encodings, used to bound counts by the bytes left before anything is allocated.
_MIN_STRING = 8  # u64 length, empty payload
_MIN_ARRAY = 4 + 8  # element type, count, no elements
_MIN_KV = 8 + 1 + 4 + 1  # key length, one key byte, value type, a u8 value
_MIN_TENSOR_INFO = 8 + 1 + 4 + 8 + 4 + 8  # name length, one name byte, n_dims, one dim, type, offset


def _min_value_size(t: GGUFValueType) -> int:
    if t == GGUFValueType.STRING:
        return _MIN_STRING
    if t == GGUFValueType.ARRAY:
        return _MIN_ARRAY
    return _SCALARS[t].size


_MISSING = object()


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the index; `ne` in GGUF order (ne[0] = row length), `shape` in NumPy order."""

    name: str
    ggml_type: GGMLType
    ne: tuple[int, ...]
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file
    n_bytes: int
    n_elements: int

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.ne[0]

    @property
    def row_bytes(self) -> int:
        return self.n_bytes // self.n_rows


class _Reader:
    """Cursor over the raw image; every read is checked against the bytes present first."""

    def __init__(self, buf: Any, size: int):
        self.buf = buf
        self.size = size
        self.pos = 0
        self.n_nested = 0  # inner arrays read so far

    def fail(self, message: str, field: str, offset: int | None = None) -> GGUFError:
        return GGUFError(message, field=field, offset=self.pos if offset is None else offset)

    def need(self, n: int, field: str, what: str | None = None) -> None:
        left = self.size - self.pos
        if n > left:
            raise self.fail(f"{what or field} needs at least {n} bytes, file has {left} left "
                            f"(file size {self.size})", field)

    def u32(self, field: str) -> int:
        self.need(4, field)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, field: str) -> int:
        self.need(8, field)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def raw_string(self, field: str, max_bytes: int | None = None) -> tuple[bytes, int]:
        """(payload, offset of its length field)."""
        start = self.pos
        n = self.u64(field)
        if max_bytes is not None and n > max_bytes:
            raise self.fail(f"{field} is {n} bytes long, limit is {max_bytes}", field, start)
        self.need(n, field, f"{field} of {n} bytes")
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return data, start

    def string(self, field: str, max_bytes: int | None = None) -> str:
        data, start = self.raw_string(field, max_bytes)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{field} is not valid UTF-8 ({e.reason} at byte {e.start})", field, start) from None

    def value_type(self, field: str) -> GGUFValueType:
        start = self.pos
        t = self.u32(field)
        if t not in _VALUE_TYPE_IDS:
            raise self.fail(f"unknown metadata value type id {t}", field, start)
        return GGUFValueType(t)

    def scalar(self, t: GGUFValueType, field: str) -> Any:
        """A STRING or fixed-size value."""
        if t == GGUFValueType.STRING:
            return self.string(field)
        s = _SCALARS[t]
        self.need(s.size, field)
        (v,) = s.unpack_from(self.buf, self.pos)
        if t == GGUFValueType.BOOL:
            if v > 1:
                raise self.fail(f"bool value is {v}, must be 0 or 1", field)
            v = bool(v)
        self.pos += s.size
        return v

    def array(self, field: str, depth: int) -> tuple[GGUFValueType, Any]:
        """(element type, value) of an array at nesting `depth` (1 = a top-level array)."""
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(f"arrays nested deeper than {MAX_ARRAY_DEPTH} levels", field)
        et = self.value_type(f"{field}.element_type")
        count_at = self.pos
        n = self.u64(f"{field}.count")
        if et == GGUFValueType.ARRAY:
            self.n_nested += n
            if self.n_nested > MAX_NESTED_ARRAYS:
                raise self.fail(f"{field}: more than {MAX_NESTED_ARRAYS} nested arrays in the file (limit)",
                                f"{field}.count", count_at)
        min_size = _min_value_size(et)
        if n > (self.size - self.pos) // min_size:
            raise self.fail(f"{field}: array of {n} {et.name} needs at least {n * min_size} bytes, "
                            f"file has {self.size - self.pos} left (file size {self.size})",
                            f"{field}.count", count_at)
        if et == GGUFValueType.STRING:
            return et, self.string_array(n, field)
        if et == GGUFValueType.ARRAY:
            out = []
            for i in range(n):
                out.append(self.array(f"{field}[{i}]", depth + 1)[1])
            return et, out
        dtype = _DTYPES[et]
        arr = np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.pos).copy()  # (n,)
        if et == GGUFValueType.BOOL:
            bad = np.flatnonzero(arr > 1)
            if bad.size:
                i = int(bad[0])
                raise self.fail(f"{field}[{i}]: bool value is {arr[i]}, must be 0 or 1", f"{field}[{i}]",
                                self.pos + i)
            arr = arr.view(np.bool_)
        arr.flags.writeable = False
        self.pos += n * dtype.itemsize
        return et, arr

    def string_array(self, n: int, field: str) -> list[str]:
        """n strings; the hot loop of opening a model (262k tokens), so kept tight."""
        buf, size, pos = self.buf, self.size, self.pos
        unpack = _U64.unpack_from
        out: list[str] = [""] * n
        i = start = 0
        try:
            for i in range(n):
                start = pos
                (ln,) = unpack(buf, pos)
                pos += 8 + ln
                if pos > size:
                    raise self.fail(f"{field}[{i}] of {ln} bytes needs at least {ln + 8} bytes, file has "
                                    f"{size - start} left (file size {size})", f"{field}[{i}]", start)
                out[i] = buf[start + 8:pos].decode("utf-8")
        except struct.error:
            raise self.fail(f"{field}[{i}] length needs at least 8 bytes, file has {size - start} left "
                            f"(file size {size})", f"{field}[{i}]", start) from None
        except UnicodeDecodeError as e:
            raise self.fail(f"{field}[{i}] is not valid UTF-8 ({e.reason} at byte {e.start})",
                            f"{field}[{i}]", start) from None
        self.pos = pos
        return out


class GGUFFile:
    """A validated GGUF file (path, mmapped read-only) or image (bytes-like object).

    Attributes: `path` (None for images), `version`, `alignment`, `data_offset` (absolute),
    `file_size`, `metadata` (file order; numeric arrays are read-only 1-D ndarrays, string arrays
    `list[str]`, nested arrays lists of those), `metadata_types`, `array_types` (element type of
    each array key), `tensors` (name -> TensorInfo, file order), `buffer` (read-only uint8 view of
    the whole file). Any inconsistency raises GGUFError naming the field and byte offset.
    `bytes` images are used without copying; other buffers (bytearray, memoryview, ndarray) are
    copied once so the validated bytes cannot change afterwards.
    """

    def __init__(self, source: str | os.PathLike | bytes | bytearray | memoryview):
        self.path: Path | None = None
        self._mmap: mmap.mmap | None = None
        self._buffer: np.ndarray | None = None
        self._kv_offsets: dict[str, int] = {}  # key -> offset of its entry, for error messages
        if isinstance(source, (str, os.PathLike)):
            self.path = Path(source)
            raw = self._map(self.path)
        elif isinstance(source, bytes):
            raw = source
        else:
            try:
                raw = memoryview(source).tobytes()
            except TypeError:
                raise GGUFError(f"cannot read a GGUF image from a {type(source).__name__}",
                                field="source", offset=0) from None
        self.file_size = len(raw)
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, GGUFValueType] = {}
        self.array_types: dict[str, GGUFValueType] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            self._parse(raw)
        except BaseException:
            self.close()
            raise
        self._buffer = np.frombuffer(raw, dtype=np.uint8) if self.file_size else np.empty(0, np.uint8)
        self._buffer.flags.writeable = False  # (file_size,) uint8

    def _map(self, path: Path) -> Any:
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    return b""
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise ModelNotFoundError(f"GGUF file not found: {path}") from None
        except IsADirectoryError:
            raise GGUFError(f"{path} is a directory, not a GGUF file", field="file", offset=0) from None
        except (OSError, ValueError) as e:
            raise GGUFError(f"cannot map {path}: {e}", field="file", offset=0) from None
        return self._mmap

    # -- parsing -------------------------------------------------------------------------------

    def _parse(self, buf: Any) -> None:
        r = _Reader(buf, self.file_size)
        if r.size == 0:
            raise r.fail("empty file, not a GGUF file", "magic", 0)
        r.need(4, "magic")
        magic = bytes(buf[0:4])
        if magic != GGUF_MAGIC:
            raise r.fail(f"not a GGUF file: magic is {magic!r}, expected {GGUF_MAGIC!r}", "magic", 0)
        r.pos = 4
        version = r.u32("version")
        if version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in (1, 2, 3):
                raise r.fail(f"big-endian GGUF not supported (version reads {version:#010x})", "version", 4)
            raise r.fail(f"GGUF version {version} not supported (supported: 2, 3)", "version", 4)
        self.version = version
        n_tensors = r.u64("tensor_count")
        n_kv = r.u64("kv_count")
        if n_tensors > MAX_TENSORS:
            raise r.fail(f"tensor_count {n_tensors} is over the limit of {MAX_TENSORS}", "tensor_count", 8)
        if n_kv > MAX_KV:
            raise r.fail(f"kv_count {n_kv} is over the limit of {MAX_KV}", "kv_count", 16)
        left = r.size - r.pos
        if n_tensors > left // _MIN_TENSOR_INFO:
            raise r.fail(f"tensor_count {n_tensors} needs at least {n_tensors * _MIN_TENSOR_INFO} bytes, "
                         f"file has {left} left (file size {r.size})", "tensor_count", 8)
        left -= n_tensors * _MIN_TENSOR_INFO
        if n_kv > left // _MIN_KV:
            raise r.fail(f"kv_count {n_kv} needs at least {n_kv * _MIN_KV} bytes, file has {left} left "
                         f"after the tensor infos (file size {r.size})", "kv_count", 16)

        for i in range(n_kv):
            self._parse_kv(r, i)
        self.alignment = self._check_alignment()

        self._tensor_names: set[str] = set()
        infos = [self._parse_tensor_info(r, i) for i in range(n_tensors)]
        self.data_offset = -(-r.pos // self.alignment) * self.alignment
        self._place_tensors(r, infos)

    def _parse_kv(self, r: _Reader, i: int) -> None:
        key_at = r.pos
        field = f"kv[{i}].key"
        if r.size - r.pos >= 8 and _U64.unpack_from(r.buf, r.pos)[0] == 0:
            raise r.fail("empty metadata key", field)
        key = r.string(field, MAX_KEY_BYTES)
        if key in self.metadata:
            raise r.fail(f"duplicate metadata key {key!r}", key, key_at)
        t = r.value_type(f"{key}.type")
        if t == GGUFValueType.ARRAY:
            et, value = r.array(key, 1)
            self.array_types[key] = et
        else:
            value = r.scalar(t, key)
        self.metadata[key] = value
        self.metadata_types[key] = t
        self._kv_offsets[key] = key_at

    def _check_alignment(self) -> int:
        if ALIGNMENT_KEY not in self.metadata:
            return DEFAULT_ALIGNMENT
        t = self.metadata_types[ALIGNMENT_KEY]
        at = self._kv_offsets[ALIGNMENT_KEY]
        if t != GGUFValueType.UINT32:
            raise GGUFError(f"{ALIGNMENT_KEY} has type {t.name}, must be UINT32", field=ALIGNMENT_KEY, offset=at)
        a = self.metadata[ALIGNMENT_KEY]
        if a == 0 or a & (a - 1):
            raise GGUFError(f"{ALIGNMENT_KEY} is {a}, must be a power of two", field=ALIGNMENT_KEY, offset=at)
        return a

    def _parse_tensor_info(self, r: _Reader, i: int) -> tuple[str, GGMLType, tuple[int, ...], int, int, int, int]:
        """(name, type, ne, relative offset, n_bytes, n_elements, offset of this info)."""
        info_at = r.pos
        field = f"tensor[{i}].name"
        if r.size - r.pos >= 8 and _U64.unpack_from(r.buf, r.pos)[0] == 0:
            raise r.fail("empty tensor name", field)
        name = r.string(field, MAX_TENSOR_NAME_BYTES)
        if name in self._tensor_names:
            raise r.fail(f"duplicate tensor name {name!r}", field, info_at)
        self._tensor_names.add(name)
        where = f"tensor {name!r}"
        dims_at = r.pos
        n_dims = r.u32(f"{name}.n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"{where}: n_dims is {n_dims}, must be 1..{MAX_DIMS}", f"{name}.n_dims", dims_at)
        ne = []
        for d in range(n_dims):
            at = r.pos
            v = r.u64(f"{name}.ne[{d}]")
            if v == 0 or v > INT64_MAX:
                raise r.fail(f"{where}: ne[{d}] is {v}, must be 1..{INT64_MAX}", f"{name}.ne[{d}]", at)
            ne.append(v)
        type_at = r.pos
        type_id = r.u32(f"{name}.type")
        try:
            ggml_type = GGMLType(type_id)
            block_size, type_size = block_size_and_bytes(ggml_type)
        except (ValueError, KeyError):
            raise r.fail(f"{where}: unknown ggml type id {type_id}", f"{name}.type", type_at) from None
        offset_at = r.pos
        rel_offset = r.u64(f"{name}.offset")
        n_elements = math.prod(ne)
        if n_elements > INT64_MAX:
            raise r.fail(f"{where}: {n_elements} elements overflow int64", f"{name}.ne", dims_at + 4)
        if ne[0] % block_size:
            raise r.fail(f"{where}: ne[0] = {ne[0]} is not a multiple of {ggml_type.name}'s block size "
                         f"{block_size}", f"{name}.ne[0]", dims_at + 4)
        n_bytes = n_elements // block_size * type_size
        if n_bytes > INT64_MAX:
            raise r.fail(f"{where}: {n_bytes} bytes overflow int64", f"{name}.ne", dims_at + 4)
        if rel_offset % self.alignment:
            raise r.fail(f"{where}: data offset {rel_offset} is not a multiple of the alignment "
                         f"{self.alignment}", f"{name}.offset", offset_at)
        return name, ggml_type, tuple(ne), rel_offset, n_bytes, n_elements, offset_at

    def _place_tensors(self, r: _Reader, infos: list) -> None:
        placed = []
        for name, ggml_type, ne, rel_offset, n_bytes, n_elements, offset_at in infos:
            field = f"{name}.offset"
            if rel_offset + n_bytes > UINT64_MAX:
                raise r.fail(f"tensor {name!r}: offset {rel_offset} + size {n_bytes} wraps around 2^64",
                             field, offset_at)
            start = self.data_offset + rel_offset
            end = start + n_bytes
            if end > r.size:
                raise r.fail(f"tensor {name!r}: data [{start}, {end}) needs at least {end} bytes, file has "
                             f"{r.size}", field, offset_at)
            self.tensors[name] = TensorInfo(name, ggml_type, ne, ne[::-1], start, n_bytes, n_elements)
            placed.append((start, end, name, offset_at))
        placed.sort()
        for (s0, e0, n0, _), (s1, e1, n1, at1) in zip(placed, placed[1:]):
            if s1 < e0:
                raise r.fail(f"tensor {n1!r} data [{s1}, {e1}) overlaps tensor {n0!r} data [{s0}, {e0})",
                             f"{n1}.offset", at1)

    # -- access --------------------------------------------------------------------------------

    @property
    def buffer(self) -> np.ndarray:
        """Read-only uint8 view of the whole file (file_size,), zero-copy over the mmap."""
        if self._buffer is None:
            raise GGUFError("GGUF file is closed", field="file")
        return self._buffer

    def tensor_info(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            raise GGUFError(f"no tensor named {name!r} in the file", field=name)
        return info

    def tensor_bytes(self, name: str) -> np.ndarray:
        """Read-only uint8 view (n_bytes,) of a tensor's raw (quantized) data."""
        info = self.tensor_info(name)
        return self.buffer[info.offset:info.offset + info.n_bytes]

    def tensor_rows(self, name: str) -> np.ndarray:
        """Read-only uint8 view (rows, row_bytes): one row per ne[0] elements."""
        info = self.tensor_info(name)
        return self.tensor_bytes(name).reshape(info.n_rows, info.row_bytes)

    # -- typed metadata accessors ----------------------------------------------------------------

    def _lookup(self, key: str, default: Any) -> tuple[bool, Any]:
        if key in self.metadata:
            return True, self.metadata[key]
        if default is _MISSING:
            raise ConfigError(f"missing metadata key {key!r}")
        return False, default

    def _wrong_type(self, key: str, expected: str) -> ConfigError:
        return ConfigError(f"metadata key {key!r} has type {self.metadata_types[key].name}, expected {expected}")

    def get_int(self, key: str, default: Any = _MISSING) -> int:
        found, v = self._lookup(key, default)
        if found and self.metadata_types[key] not in _INT_TYPES:
            raise self._wrong_type(key, "an integer")
        return v

    def get_float(self, key: str, default: Any = _MISSING) -> float:
        """FLOAT32/FLOAT64, or an integer type (widened to float)."""
        found, v = self._lookup(key, default)
        if not found:
            return v
        if self.metadata_types[key] not in _FLOAT_TYPES | _INT_TYPES:
            raise self._wrong_type(key, "a float")
        return float(v)

    def get_str(self, key: str, default: Any = _MISSING) -> str:
        found, v = self._lookup(key, default)
        if found and self.metadata_types[key] != GGUFValueType.STRING:
            raise self._wrong_type(key, "a string")
        return v

    def get_bool(self, key: str, default: Any = _MISSING) -> bool:
        found, v = self._lookup(key, default)
        if found and self.metadata_types[key] != GGUFValueType.BOOL:
            raise self._wrong_type(key, "a bool")
        return v

    def get_array(self, key: str, default: Any = _MISSING, element_type: GGUFValueType | None = None) -> Any:
        """An array value; with `element_type`, also require that element type."""
        found, v = self._lookup(key, default)
        if not found:
            return v
        if self.metadata_types[key] != GGUFValueType.ARRAY:
            raise self._wrong_type(key, "an array")
        et = self.array_types[key]
        if element_type is not None and et != element_type:
            raise ConfigError(f"metadata key {key!r} is an array of {et.name}, expected {element_type.name}")
        return v

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the mapping; views already handed out keep it alive until they are dropped."""
        self._buffer = None
        mm, self._mmap = self._mmap, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # live tensor views still export the buffer; the mapping dies with them

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        src = str(self.path) if self.path is not None else f"<{self.file_size}-byte image>"
        return (f"GGUFFile({src}, v{getattr(self, 'version', '?')}, {len(self.metadata)} keys, "
                f"{len(self.tensors)} tensors)")
