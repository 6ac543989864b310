"""Python host of the model metadata module (`realm/guest/realm_meta.wasm`, docs/abi.md).

The module parses an untrusted GGUF header inside its own wasm sandbox (memory-capped, deadline)
and answers tensor table, string metadata, `ModelConfigABI`, tokenization and dequantization. The
JS hosts use it instead of a GGUF reader of their own; in Python it is tested against the
`realm.gguf` / `realm.config` / `realm.tokenizer` oracles. File bytes reach it through
`realm_file_read` (`os.pread`, bounds-checked), the only way it sees the file.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import wasmtime

from realm.errors import ConfigError, GGUFError, RealmError, TokenizerError, UnsupportedError
from realm.host.abi import Err, guest_error
from realm.host.runtime import MAX_TABLE_ELEMENTS, load_module
from realm.host.wasmtime_adapter import EPOCH_TICK, NO_DEADLINE, engine

log = logging.getLogger("realm.host.meta")

DEFAULT_META_MEMORY = 256 << 20  # the default model's 262,144-token vocabulary needs ~30 MiB
DEFAULT_META_TIMEOUT = 60.0
META_TENSOR = struct.Struct("<II4QQQII")  # ggml_type, n_dims, ne[4] (GGUF order), n_bytes, data_offset, name_len, reserved
assert META_TENSOR.size == 64
MAX_FILE_READ = 1 << 30  # bytes one realm_file_read may ask for
ERROR_MAX = 4096
_U32 = 0xFFFFFFFF
_SUFFIX = re.compile(r"^(.*) \(field (.*), offset (\d+)\)$", re.DOTALL)
_I32 = wasmtime.ValType.i32
_I64 = wasmtime.ValType.i64
_LOG_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}


def default_meta_path() -> Path:
    """The prebuilt metadata module shipped in the package."""
    return Path(__file__).resolve().parent.parent / "guest" / "realm_meta.wasm"


class MetaModule:
    """One instance of the metadata module over one open model file.

    Parameters
    ----------
    path : the GGUF file (read by byte ranges, never whole)
    memory_limit : cap on the module's linear memory in bytes
    timeout : seconds one call may run (None: no limit)
    wasm : the module (path or bytes); default the shipped `realm_meta.wasm`

    Raises GGUFError (malformed file: the message, field and offset of `realm.gguf`'s), GuestError
    (a trap, the memory limit, a deadline) or ModelNotFoundError.
    """

    def __init__(self, path: str | os.PathLike, *, memory_limit: int = DEFAULT_META_MEMORY,
                 timeout: float | None = DEFAULT_META_TIMEOUT, wasm: Any = None):
        self.path = Path(path)
        self.memory_limit = int(memory_limit)
        self.timeout = timeout
        self.bytes_read = 0
        self.file_reads = 0
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            from realm.errors import ModelNotFoundError

            raise ModelNotFoundError(f"GGUF file not found: {self.path}") from None
        except IsADirectoryError:
            raise GGUFError(f"{self.path} is a directory, not a GGUF file", field="file", offset=0) from None
        except OSError as e:
            raise GGUFError(f"cannot open {self.path}: {e}", field="file", offset=0) from None
        try:
            self.file_size = os.fstat(self._fd).st_size
            if not os.path.isfile(self.path):
                raise GGUFError(f"{self.path} is not a regular file", field="file", offset=0)
            self._start(wasm)
            self._open()
        except BaseException:
            self.close()
            raise

    # -- setup -----------------------------------------------------------------------------------

    def _start(self, wasm: Any) -> None:
        module = load_module(default_meta_path() if wasm is None else wasm, runtime="wasmtime").native
        self._store = wasmtime.Store(engine())
        self._store.set_limits(memory_size=self.memory_limit, table_elements=MAX_TABLE_ELEMENTS, instances=1,
                               tables=4, memories=1)
        self._store.set_epoch_deadline(NO_DEADLINE)
        self._memory: wasmtime.Memory | None = None
        linker = wasmtime.Linker(engine())
        linker.define_func("env", "realm_file_read", wasmtime.FuncType([_I64(), _I32(), _I32()], [_I32()]),
                           self._file_read, access_caller=True)
        linker.define_func("env", "realm_log", wasmtime.FuncType([_I32(), _I32(), _I32()], [_I32()]),
                           self._log, access_caller=True)
        try:
            instance = linker.instantiate(self._store, module)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise guest_error(f"cannot instantiate the metadata module: {str(e).splitlines()[0]}") from None
        self._exports = instance.exports(self._store)
        memory = self._exports["memory"]
        if not isinstance(memory, wasmtime.Memory):
            raise guest_error("the metadata module exports no memory")
        self._memory = memory
        self.trapped: str | None = None

    def _open(self) -> None:
        rc = self.call("meta_open", self.file_size)
        if rc < 0:
            raise self._error(rc, "open")

    # -- host functions (never raise across the boundary) ----------------------------------------

    def _span(self, caller) -> tuple[int, int]:
        memory = self._memory
        n = memory.data_len(caller)
        return (ctypes.cast(memory.data_ptr(caller), ctypes.c_void_p).value or 0, n) if n else (0, 0)

    def _file_read(self, caller, offset: int, out_ptr: int, length: int) -> int:
        try:
            out_ptr &= _U32
            length &= _U32
            if offset < 0 or length > MAX_FILE_READ:
                return int(Err.ERR_BAD_ARG)
            base, size = self._span(caller)
            if out_ptr + length > size:
                return int(Err.ERR_BOUNDS)
            if offset >= self.file_size or length == 0:
                return 0
            data = os.pread(self._fd, min(length, self.file_size - offset), offset)
            if data:
                ctypes.memmove(base + out_ptr, data, len(data))
            self.bytes_read += len(data)
            self.file_reads += 1
            return len(data)
        except Exception:
            log.exception("realm_file_read failed")
            return int(Err.ERR_INTERNAL)

    def _log(self, caller, level: int, ptr: int, length: int) -> int:
        try:
            ptr &= _U32
            length = min(length & _U32, 1024)
            base, size = self._span(caller)
            if ptr + length > size:
                return int(Err.ERR_BOUNDS)
            text = ctypes.string_at(base + ptr, length).decode("utf-8", errors="replace")
            log.log(_LOG_LEVELS.get(level, logging.INFO), "meta: %s", text)
            return 0
        except Exception:
            return int(Err.ERR_INTERNAL)

    # -- calls -----------------------------------------------------------------------------------

    def call(self, name: str, *args: int) -> int:
        """Call export `name`; a trap (memory limit, deadline) raises GuestError (the instance is
        unusable after)."""
        if self.trapped is not None:
            raise guest_error(f"the metadata module trapped earlier ({self.trapped})")
        f = self._exports[name]
        if self.timeout is None:
            self._store.set_epoch_deadline(NO_DEADLINE)
        else:
            self._store.set_epoch_deadline(max(1, int(self.timeout / EPOCH_TICK + 0.999)) + 1)
        try:
            return f(self._store, *args)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            self.trapped = str(e).splitlines()[0]
            raise guest_error(f"the metadata module trapped in {name}: {self.trapped} (memory "
                              f"{self.memory_size} of {self.memory_limit} bytes)") from None

    def has_export(self, name: str) -> bool:
        try:
            return isinstance(self._exports[name], wasmtime.Func)
        except KeyError:
            return False

    @property
    def memory_size(self) -> int:
        """Current (= peak: wasm memory never shrinks) byte size of the module's linear memory."""
        return self._memory.data_len(self._store) if self._memory is not None else 0

    def error_text(self) -> str:
        ptr = self._alloc(ERROR_MAX)
        try:
            n = self.call("meta_error", ptr, ERROR_MAX)
            return self._read(ptr, max(n, 0)).decode("utf-8", errors="replace")
        finally:
            self._free(ptr, ERROR_MAX)

    def _error(self, rc: int, what: str) -> RealmError:
        text = self.error_text()
        if rc == Err.ERR_BAD_GGUF:
            m = _SUFFIX.match(text)
            if m:
                return GGUFError(m.group(1), field=m.group(2), offset=int(m.group(3)))
            return (ConfigError if what == "config" else TokenizerError if what == "tokenizer" else GGUFError)(text)
        if rc == Err.ERR_UNSUPPORTED:
            return UnsupportedError(text)
        if what == "tokenizer" and rc in (Err.ERR_BAD_ARG, Err.ERR_BAD_TOKEN):
            return TokenizerError(text)
        return guest_error(f"metadata module {what}: {text}", rc)

    def _alloc(self, n: int) -> int:
        ptr = self.call("meta_alloc", n) & _U32
        if ptr == 0:
            raise guest_error(f"the metadata module could not allocate {n} bytes", Err.ERR_OOM)
        return ptr

    def _free(self, ptr: int, n: int) -> None:
        self.call("meta_free", ptr, n)

    def _check(self, ptr: int, n: int) -> int:
        base, size = self._span(self._store)
        if ptr < 0 or n < 0 or ptr + n > size:
            raise guest_error(f"range [{ptr}, {ptr + n}) outside the module's memory", Err.ERR_BOUNDS)
        return base + ptr

    def _read(self, ptr: int, n: int) -> bytes:
        return ctypes.string_at(self._check(ptr, n), n) if n else b""

    def _write(self, ptr: int, data: bytes) -> None:
        if data:
            ctypes.memmove(self._check(ptr, len(data)), data, len(data))

    def _with_output(self, name: str, what: str, *args: int, size: int = 4096) -> bytes:
        """Call an export taking `(..., out_ptr, out_max)`; grows the buffer on ERR_TOO_SMALL."""
        for _ in range(2):
            ptr = self._alloc(size)
            try:
                rc = self.call(name, *args, ptr, size)
                if rc >= 0:
                    return self._read(ptr, rc)
            finally:
                self._free(ptr, size)
            if rc != Err.ERR_TOO_SMALL:
                raise self._error(rc, what)
            size = self.call("meta_last_size")
        raise self._error(rc, what)

    def _with_input(self, data: bytes):
        """(ptr, n) of a copy of `data` in module memory; free with `_free(ptr, max(n, 1))`."""
        n = len(data)
        ptr = self._alloc(max(n, 1))
        self._write(ptr, data)
        return ptr, n

    # -- the model -------------------------------------------------------------------------------

    def tensors(self) -> list[dict[str, Any]]:
        """The tensor table, file order: name, ggml_type, n_dims, ne (GGUF order, 4 entries, unused 1),
        n_bytes, offset (absolute)."""
        n = self.call("meta_tensor_count")
        if n < 0:
            raise self._error(n, "tensors")
        out = []
        buf = self._alloc(64)
        try:
            for i in range(n):
                rc = self.call("meta_tensor_entry", i, buf)
                if rc < 0:
                    raise self._error(rc, "tensors")
                t, nd, *rest = META_TENSOR.unpack(self._read(buf, 64))
                ne, n_bytes, offset, name_len = tuple(rest[:4]), rest[4], rest[5], rest[6]
                name = self._with_output("meta_tensor_name", "tensors", i, size=max(name_len, 1)).decode("utf-8")
                out.append({"name": name, "ggml_type": t, "n_dims": nd, "ne": ne, "n_bytes": n_bytes,
                            "offset": offset})
        finally:
            self._free(buf, 64)
        return out

    def get_string(self, key: str) -> str | None:
        """A string metadata value, None if the key is absent."""
        kptr, kn = self._with_input(key.encode("utf-8"))
        try:
            try:
                return self._with_output("meta_get_string", "metadata", kptr, kn).decode("utf-8")
            except RealmError as e:
                if getattr(e, "code", None) == Err.ERR_NO_TENSOR:
                    return None
                raise
        finally:
            self._free(kptr, max(kn, 1))

    def config_bytes(self) -> bytes:
        """The 128-byte ModelConfigABI (raises ConfigError / UnsupportedError like `ModelConfig.from_gguf`)."""
        return self._with_output("meta_config", "config", size=128)

    # -- the tokenizer ---------------------------------------------------------------------------

    def init_tokenizer(self) -> None:
        """Build the module's tokenizer (once): TokenizerError / UnsupportedError like `realm.tokenizer`."""
        if getattr(self, "_tokenizer_ready", False):
            return
        rc = self.call("meta_tokenizer_init")
        if rc < 0:
            raise self._error(rc, "tokenizer")
        self._tokenizer_ready = True

    @property
    def vocab_size(self) -> int:
        self.init_tokenizer()
        n = self.call("meta_vocab_size")
        if n < 0:
            raise self._error(n, "tokenizer")
        return n

    @property
    def stop_ids(self) -> frozenset[int]:
        """The end-of-generation ids (as `Tokenizer.stop_ids`)."""
        self.init_tokenizer()
        return frozenset(self._ids_call("meta_stop_ids", 64))

    def _ids_call(self, name: str, max_ids: int, *args: int) -> list[int]:
        for _ in range(2):
            ptr = self._alloc(4 * max(max_ids, 1))
            try:
                rc = self.call(name, *args, ptr, max_ids)
                if rc >= 0:
                    return np.frombuffer(self._read(ptr, 4 * rc), "<i4").tolist()
            finally:
                self._free(ptr, 4 * max(max_ids, 1))
            if rc != Err.ERR_TOO_SMALL:
                raise self._error(rc, "tokenizer")
            max_ids = self.call("meta_last_size") // 4
        raise self._error(rc, "tokenizer")

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False, *, max_ids: int | None = None) -> list[int]:
        """Text -> ids, as `Tokenizer.encode(text, add_bos, special)` (lone surrogates become U+FFFD)."""
        self.init_tokenizer()
        data = text.encode("utf-8", errors="surrogatepass")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            data = re.sub("[\ud800-\udfff]", "\ufffd", text).encode("utf-8")
        return self.tokenize_bytes(data, add_bos, special, max_ids=max_ids)

    def tokenize_bytes(self, data: bytes, add_bos: bool = True, special: bool = False, *,
                       max_ids: int | None = None) -> list[int]:
        """UTF-8 bytes -> ids (invalid UTF-8: TokenizerError). `max_ids` fixes the output buffer
        (a longer result raises GuestError ERR_TOO_SMALL) instead of growing it."""
        self.init_tokenizer()
        tptr, tn = self._with_input(data)
        try:
            flags = int(bool(add_bos)) | 2 * int(bool(special))
            if max_ids is not None:
                ptr = self._alloc(4 * max(max_ids, 1))
                try:
                    rc = self.call("meta_tokenize", tptr, tn, flags, ptr, max_ids)
                    if rc < 0:
                        raise self._error(rc, "tokenizer")
                    return np.frombuffer(self._read(ptr, 4 * rc), "<i4").tolist()
                finally:
                    self._free(ptr, 4 * max(max_ids, 1))
            return self._ids_call("meta_tokenize", tn // 2 + 16, tptr, tn, flags)
        finally:
            self._free(tptr, max(tn, 1))

    def detokenize(self, ids, special: bool = False, remove_special: bool = False) -> str:
        """Ids -> text, as `Tokenizer.decode(ids, special, remove_special)`."""
        self.init_tokenizer()
        arr = np.asarray(list(ids), dtype=np.int64)
        if arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
            raise TokenizerError("token id out of the int32 range")
        data = arr.astype("<i4").tobytes()
        iptr, n = self._with_input(data)
        try:
            flags = int(bool(special)) | 2 * int(bool(remove_special))
            out = self._with_output("meta_detokenize", "tokenizer", iptr, len(arr), flags,
                                    size=8 * len(arr) + 64)
            return out.decode("utf-8")
        finally:
            self._free(iptr, max(n, 1))

    def stream(self, special: bool = False, lstrip_first: bool = False) -> "MetaStream":
        """A streaming decoder matching `realm.tokenizer.StreamDecoder(tok, special, lstrip_first)`
        (one per module: a new one resets the previous)."""
        self.init_tokenizer()
        rc = self.call("meta_stream_reset", int(bool(special)) | 2 * int(bool(lstrip_first)))
        if rc < 0:
            raise self._error(rc, "tokenizer")
        return MetaStream(self)

    # -- dequantization --------------------------------------------------------------------------

    def dequantize(self, ggml_type: int, data: bytes) -> np.ndarray:
        """Raw tensor bytes (whole blocks) -> float32 through the module (the guest's kernels)."""
        sptr, n = self._with_input(bytes(data))
        try:
            out = self._with_output("meta_dequantize", "dequantize", int(ggml_type), sptr, n, size=max(64, 8 * n))
        finally:
            self._free(sptr, max(n, 1))
        return np.frombuffer(out, "<f4").copy()

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)
        self._memory = None
        self._exports = None

    def __enter__(self) -> "MetaModule":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class MetaStream:
    """The module's streaming decoder: `feed(id)` -> the text completed so far, `flush()` the rest."""

    def __init__(self, module: MetaModule):
        self._m = module

    def feed(self, token_id: int) -> str:
        return self._m._with_output("meta_stream_feed", "tokenizer", int(token_id), size=256).decode("utf-8")

    def flush(self) -> str:
        return self._m._with_output("meta_stream_flush", "tokenizer", size=256).decode("utf-8")


__all__ = ["MetaModule", "MetaStream", "DEFAULT_META_MEMORY", "default_meta_path"]
