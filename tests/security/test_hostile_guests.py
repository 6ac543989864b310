"""Hostile guests: hand-written WAT modules attacking the host functions and the runtime limits.

Every attack must end in an ABI error code or a GuestError, and afterwards the store and a fresh
guest must still work: the `healthy` check at the end of each test reads exact bytes through a
fresh proxy and runs a normal generation with the real guest on the attacked store, whose logits
must equal those of a store no hostile guest touched.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")

from synth import make_model  # noqa: E402

from realm.errors import GuestError  # noqa: E402
from realm.host import abi, runtime  # noqa: E402
from realm.host.abi import Err  # noqa: E402
from realm.host.runtime import Guest  # noqa: E402
from realm.host.store import ModelStore  # noqa: E402
from realm.quants import GGMLType  # noqa: E402

pytestmark = pytest.mark.usefixtures("wasm_runtime")  # under every installed runtime (conftest.py)

WAT_DIR = Path(__file__).resolve().parent / "wat"
PROXY = (WAT_DIR / "proxy.wat").read_text()
MEM = 16 * 65536  # the proxy's initial memory
NAME_AT, OUT_AT, BIG_AT = 0x100, 0x1000, 0x10000
TIMEOUT = 0.2  # seconds a runaway call may run
STOP_WITHIN = 10.0  # ... and the generous bound (noisy CI machine) within which it must be stopped


def s32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("hostile") / "m.gguf", arch="llama", qtype=GGMLType.Q8_0)


@pytest.fixture()
def store(model_path):
    st = ModelStore(max_image_bytes=1 << 20)
    st.model_id = st.add(model_path)
    yield st
    healthy(st, model_path)
    st.close()


@functools.cache
def guest_module():
    """The shipped guest, compiled once here: references and tenants run the same code even if the
    .wasm is rebuilt while the tests run."""
    return runtime.load_module(runtime.default_guest_path().read_bytes())


_expected_logits: dict[Path, np.ndarray] = {}
PROMPT = [1, 17, 42, 99]


def generation(st: ModelStore, path: Path) -> np.ndarray:
    """Logits after a short prompt from the real guest (a WasmEngine) reading through `st`."""
    from realm.config import ModelConfig
    from realm.engines.wasm import WasmEngine
    from realm.gguf import GGUFFile

    with GGUFFile(path) as f:
        eng = WasmEngine(f, ModelConfig.from_gguf(f), n_ctx=16, store=st, wasm=guest_module())
        try:
            logits = eng.eval(PROMPT)
            return np.concatenate([logits, eng.eval([int(logits.argmax())])])
        finally:
            eng.close()


def healthy(st: ModelStore, path: Path) -> None:
    """The store still serves exact bytes to a fresh guest, and a normal generation is unchanged."""
    if runtime.default_guest_path().exists():
        if path not in _expected_logits:
            fresh = ModelStore()
            _expected_logits[path] = generation(fresh, path)  # never touched by a hostile guest
            fresh.close()
        np.testing.assert_array_equal(generation(st, path), _expected_logits[path])
    g = Guest(PROXY, model_store=st)
    g.acquire(st.model_id)
    name = b"blk.0.attn_k.weight"
    g.write(NAME_AT, name)
    handle = g.call("call_realm_tensor_info", st.model_id, NAME_AT, len(name), OUT_AT)
    assert handle >= 0
    info = abi.unpack_tensor_info(g.read(OUT_AT, 48))
    assert g.call("call_realm_read_tensor", st.model_id, handle, 0, BIG_AT, info["n_bytes"]) == info["n_bytes"]
    t = st.gguf(st.model_id).tensors[name.decode()]
    with open(path, "rb") as f:
        f.seek(t.offset)
        assert g.read(BIG_AT, info["n_bytes"]) == f.read(info["n_bytes"])
    g.close()


class Proxy:
    def __init__(self, st: ModelStore, hold: bool = True, **kw):
        self.g = Guest(PROXY, model_store=st, **kw)
        self.mid = st.model_id
        if hold:
            self.g.acquire(self.mid)

    def __getattr__(self, name):
        return lambda *args: self.g.call("call_realm_" + name, *args)

    def handle(self, name: str = "blk.0.attn_q.weight") -> tuple[int, int]:
        self.g.write(NAME_AT, name.encode())
        h = self.tensor_info(self.mid, NAME_AT, len(name), OUT_AT)
        assert h >= 0
        return h, abi.unpack_tensor_info(self.g.read(OUT_AT, 48))["n_bytes"]


# ---- pointers and lengths ---------------------------------------------------------------------

BAD_RANGES = [
    (MEM, 1),  # one past the end
    (MEM - 4, 8),  # straddles the end
    (s32(0xFFFFFFFF), 1),  # negative pointer as i32
    (0, -1),  # negative length
    (s32(0xFFFFFF00), 0x200),  # ptr + len wraps past 2^32 in 32-bit arithmetic
    (s32(0x80000000), 16),
    (MEM + 1, 0),  # empty range starting past the end
]


@pytest.mark.parametrize("ptr,length", BAD_RANGES)
def test_out_of_bounds_ranges_are_refused(store, ptr, length):
    h = Proxy(store)
    handle, n_bytes = h.handle()
    before = h.g.read(0, MEM)
    mid = h.mid
    assert h.read_tensor(mid, handle, 0, ptr, length) == Err.ERR_BOUNDS
    assert h.tensor_info(mid, ptr, length, OUT_AT) == Err.ERR_BOUNDS
    assert h.get_tensor(mid, ptr, length, OUT_AT, 1 << 20) == Err.ERR_BOUNDS
    assert h.log(1, ptr, length) == Err.ERR_BOUNDS
    assert h.store_model(ptr, length, 0) == Err.ERR_BOUNDS
    assert h.g.read(0, MEM) == before  # a refused call writes nothing


@pytest.mark.parametrize("bad_ptr", [
    lambda size: MEM - size + 1,  # the last byte falls off the end
    lambda size: MEM,
    lambda size: -1,
    lambda size: s32(0xFFFFFFF0),  # wraps past 2^32
    lambda size: s32(0x80000000),
])
def test_out_of_bounds_output_pointers(store, bad_ptr):
    h = Proxy(store)
    handle, _ = h.handle()
    mid = h.mid
    h.g.write(NAME_AT, b"blk.0.attn_q.weight")
    before = h.g.read(0, MEM)
    assert h.tensor_info(mid, NAME_AT, 19, bad_ptr(48)) == Err.ERR_BOUNDS
    assert h.get_tensor(mid, NAME_AT, 19, bad_ptr(4 * 64 * 64), 1 << 30) == Err.ERR_BOUNDS
    assert h.get_config(mid, bad_ptr(128), 128) == Err.ERR_BOUNDS
    assert h.get_model_info(mid, OUT_AT, bad_ptr(8)) == Err.ERR_BOUNDS  # u64 total
    assert h.get_model_info(mid, bad_ptr(4), OUT_AT) == Err.ERR_BOUNDS  # u32 count
    assert h.read_tensors(mid, bad_ptr(24), 1) == Err.ERR_BOUNDS  # 24-byte requests
    assert h.read_tensors(mid, bad_ptr(24 * 100), 100) == Err.ERR_BOUNDS
    assert h.read_tensor(mid, handle, 0, bad_ptr(16), 16) == Err.ERR_BOUNDS
    assert h.g.read(0, MEM) == before  # nothing written, not even the count


def test_empty_ranges_and_the_very_end(store):
    h = Proxy(store)
    handle, n_bytes = h.handle()
    assert h.read_tensor(h.mid, handle, 0, MEM, 0) == 0  # empty range ending at the end: fine
    assert h.read_tensor(h.mid, handle, 0, MEM - 8, 8) == 8
    assert h.read_tensor(h.mid, handle, n_bytes, OUT_AT, 0) == 0
    h.g.write(NAME_AT, b"x")
    assert h.tensor_info(h.mid, NAME_AT, 0, OUT_AT) == Err.ERR_BAD_ARG  # empty name
    assert h.log(0, MEM, 0) == 0


def test_memory_growth_is_seen_by_the_host(store):
    h = Proxy(store)
    handle, _ = h.handle()
    assert h.read_tensor(h.mid, handle, 0, MEM + 100, 64) == Err.ERR_BOUNDS
    assert h.g.call("grow", 1) == 16
    assert h.read_tensor(h.mid, handle, 0, MEM + 100, 64) == 64


# ---- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,code", [
    (b"\xff\xfe\xfd", Err.ERR_BAD_ARG),  # not UTF-8
    (b"blk.0.attn_q.weigh\xc3", Err.ERR_BAD_ARG),  # truncated UTF-8 sequence
    (b"x" * (abi.MAX_NAME_BYTES + 1), Err.ERR_BAD_ARG),  # huge
    (b"blk.0.attn_q.weight\0", Err.ERR_NO_TENSOR),
    (b"../../etc/passwd", Err.ERR_NO_TENSOR),
    ("blk.0.attn_q.wéight".encode(), Err.ERR_NO_TENSOR),
])
def test_bad_names(store, name, code):
    h = Proxy(store)
    h.g.write(BIG_AT, name)
    assert h.tensor_info(h.mid, BIG_AT, len(name), OUT_AT) == code
    assert h.get_tensor(h.mid, BIG_AT, len(name), OUT_AT, 1 << 20) == code


# ---- model ids -------------------------------------------------------------------------------------


def test_unknown_removed_and_foreign_models_look_the_same(store, model_path, tmp_path):
    h = Proxy(store, hold=False)
    other = make_model(tmp_path / "other.gguf", arch="llama", qtype=GGMLType.Q4_0, seed=9)
    foreign = store.add(other)
    owner = Proxy(store, hold=False)
    owner.g.acquire(foreign)  # held by another tenant only
    h.g.write(NAME_AT, b"token_embd.weight")
    for mid in (store.model_id, foreign, 0, -1, 1, 12345, (1 << 63) - 1, -(1 << 63)):
        assert h.tensor_info(mid, NAME_AT, 17, OUT_AT) == Err.ERR_NO_MODEL
        assert h.read_tensor(mid, 0, 0, OUT_AT, 4) == Err.ERR_NO_MODEL
        assert h.read_tensors(mid, OUT_AT, 0) == Err.ERR_NO_MODEL
        assert h.get_tensor(mid, NAME_AT, 17, OUT_AT, 1 << 20) == Err.ERR_NO_MODEL
        assert h.get_model_info(mid, OUT_AT, OUT_AT + 8) == Err.ERR_NO_MODEL
        assert h.get_config(mid, OUT_AT, 128) == Err.ERR_NO_MODEL
        assert h.remove_model(mid) == Err.ERR_NO_MODEL
    assert store.holders(foreign) == {owner.g.holder: 1}  # the foreign reference is untouched
    # a model removed by the consumer cannot be acquired, but holders keep reading it
    g = Proxy(store)
    store.remove(foreign)
    with pytest.raises(Exception):
        h.g.acquire(foreign)
    owner.g.write(NAME_AT, b"token_embd.weight")
    assert owner.tensor_info(foreign, NAME_AT, 17, OUT_AT) >= 0
    owner.g.close()
    assert foreign not in store and store.stats()["n_copies"] == 1
    g.g.close()


def test_handles_and_offsets(store):
    h = Proxy(store)
    handle, n = h.handle()
    mid = h.mid
    n_tensors = len(store.gguf(mid).tensors)
    for bad in (-1, n_tensors, s32(0x7FFFFFFF), s32(0x80000000)):
        assert h.read_tensor(mid, bad, 0, OUT_AT, 4) == Err.ERR_NO_TENSOR
    for offset, length in [(n - 1, 2), (n, 1), (-1, 4), (-(1 << 63), 4), ((1 << 63) - 1, 4),
                           ((1 << 63) - 2, 4), (n + 1, 0)]:
        assert h.read_tensor(mid, handle, offset, OUT_AT, length) == Err.ERR_RANGE, (offset, length)
    assert h.read_tensor(mid, handle, n - 4, OUT_AT, 4) == 4
    # batched reads get the same checks, all before any copy
    h.g.write(BIG_AT, abi.pack_read_req(handle, OUT_AT, 0, 4) + abi.pack_read_req(handle, OUT_AT, n - 1, 2))
    assert h.read_tensors(mid, BIG_AT, 2) == Err.ERR_RANGE
    h.g.write(BIG_AT, abi.pack_read_req(handle, OUT_AT, 0, 4) + abi.pack_read_req(handle, MEM - 2, 0, 4))
    assert h.read_tensors(mid, BIG_AT, 2) == Err.ERR_BOUNDS
    assert h.read_tensors(mid, BIG_AT, -1) == Err.ERR_BAD_ARG


def test_outputs_overlapping_inputs(store):
    h = Proxy(store)
    handle, n = h.handle()
    raw = store.gguf(h.mid).tensor_bytes("blk.0.attn_q.weight").tobytes()
    # the requests are overwritten by their own outputs
    reqs = b"".join(abi.pack_read_req(handle, BIG_AT + 24 * i, 100 * i, 48) for i in range(4))
    h.g.write(BIG_AT, reqs)
    assert h.read_tensors(h.mid, BIG_AT, 4) == 4 * 48
    for i in range(4):
        start = BIG_AT + 24 * i
        expect = raw[100 * i:100 * i + 48] if i == 3 else raw[100 * i:100 * i + 24]
        assert h.g.read(start, len(expect)) == expect
    # the output buffer starts on the name
    name = b"output_norm.weight"
    h.g.write(OUT_AT, name)
    assert h.get_tensor(h.mid, OUT_AT, len(name), OUT_AT, 1 << 16) > 0
    expect = store.gguf(h.mid).tensor_bytes("output_norm.weight").view(np.float32)
    np.testing.assert_array_equal(h.g.read_array(OUT_AT, np.float32, expect.size), expect)
    # output over the TensorInfo's own name
    h.g.write(OUT_AT, name)
    assert h.tensor_info(h.mid, OUT_AT, len(name), OUT_AT + 4) >= 0


# ---- quotas and malformed images -------------------------------------------------------------------


def test_read_quota(store):
    h = Proxy(store, max_read_bytes=1000)
    handle, _ = h.handle()
    assert h.read_tensor(h.mid, handle, 0, OUT_AT, 600) == 600
    assert h.read_tensor(h.mid, handle, 0, OUT_AT, 600) == Err.ERR_QUOTA
    assert h.read_tensor(h.mid, handle, 0, OUT_AT, 400) == 400
    assert h.read_tensor(h.mid, handle, 0, OUT_AT, 1) == Err.ERR_QUOTA
    h.g.write(NAME_AT, b"output_norm.weight")
    assert h.get_tensor(h.mid, NAME_AT, 18, OUT_AT, 1 << 16) == Err.ERR_QUOTA


def test_model_count_quota(store, model_path):
    h = Proxy(store, max_models=1)
    image = model_path.read_bytes()
    h.g.call("grow", 8)
    h.g.write(BIG_AT, image)
    assert h.store_model(BIG_AT, len(image), 0) == store.model_id  # the model it already holds
    other = bytearray(image)
    other[-1] ^= 0xFF  # different content (last tensor byte)
    h.g.write(BIG_AT, bytes(other))
    assert h.store_model(BIG_AT, len(other), 0) == Err.ERR_QUOTA
    assert store.stats()["n_copies"] == 1


def _malformed_images(image: bytes) -> list[bytes]:
    bad_count = bytearray(image)
    bad_count[8:16] = (1 << 62).to_bytes(8, "little")  # absurd tensor count
    bad_kv = bytearray(image)
    bad_kv[16:24] = (1 << 40).to_bytes(8, "little")  # absurd metadata count
    return [b"", b"GGUF", image[:100], image[: len(image) // 2], b"\0" * 4096,
            b"GGML" + image[4:], bytes(bad_count), bytes(bad_kv), os.urandom(3000)]


def test_malformed_gguf_images(store, model_path):
    h = Proxy(store, hold=False)
    h.g.call("grow", 8)
    for image in _malformed_images(model_path.read_bytes()):
        h.g.write(BIG_AT, image)
        assert h.store_model(BIG_AT, len(image), 0) == Err.ERR_BAD_GGUF
    assert store.stats()["n_copies"] == 1
    # bigger than the store's image limit (1 MiB here)
    h.g.call("grow", 20)
    assert h.store_model(BIG_AT, (1 << 20) + 1, 0) == Err.ERR_QUOTA


def test_host_function_bug_is_err_internal(store, monkeypatch, caplog):
    h = Proxy(store)
    handle, _ = h.handle()

    def boom(*a):
        raise RuntimeError("simulated host bug")

    monkeypatch.setattr(store, "charge", boom)
    with caplog.at_level(logging.ERROR, logger="realm.host"):
        assert h.read_tensor(h.mid, handle, 0, OUT_AT, 4) == Err.ERR_INTERNAL
    assert "simulated host bug" in caplog.text
    monkeypatch.undo()
    assert h.read_tensor(h.mid, handle, 0, OUT_AT, 4) == 4  # the guest goes on


# ---- runtime limits --------------------------------------------------------------------------------

GROW = """(module (memory (export "memory") 1)
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))"""
SPIN = """(module (memory (export "memory") 1)
  (func (export "spin") (loop $l (br $l))))"""
RECURSE = """(module (memory (export "memory") 1)
  (func $r (export "recurse") (param i32) (result i32)
    (i32.add (call $r (i32.add (local.get 0) (i32.const 1))) (i32.const 1))))"""
HOST_LOOP = """(module
  (import "env" "realm_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "hammer") (loop $l (drop (call $log (i32.const 9) (i32.const 0) (i32.const 0))) (br $l))))"""


def test_memory_grow_past_the_budget(store):
    g = Guest(GROW, model_store=store, memory_budget=2 << 20)
    assert g.call("grow", 1) == 1
    assert g.call("grow", 100) == -1  # 2 + 100 pages > 2 MiB
    assert g.memory_size == 2 * 65536
    assert g.call("grow", 30) == 2
    assert g.call("grow", 1) == -1
    assert g.memory_size == 2 << 20
    with pytest.raises(GuestError, match="memory budget"):
        Guest("""(module (memory (export "memory") 64))""", model_store=store, memory_budget=1 << 20)


def test_runaway_loop_is_stopped_by_the_deadline(store):
    g = Guest(SPIN, model_store=store, timeout=TIMEOUT)
    t0 = time.perf_counter()
    with pytest.raises(GuestError, match="deadline"):
        g.call("spin")
    assert time.perf_counter() - t0 < STOP_WITHIN
    with pytest.raises(GuestError, match="trapped earlier"):
        g.call("spin")


def test_host_call_tight_loop_is_stopped(store):
    g = Guest(HOST_LOOP, model_store=store, timeout=TIMEOUT)
    t0 = time.perf_counter()
    with pytest.raises(GuestError, match="deadline"):
        g.call("hammer")
    assert time.perf_counter() - t0 < STOP_WITHIN
    assert g.tenant.host_calls > 10


def test_deep_recursion_is_a_stack_overflow(store):
    g = Guest(RECURSE, model_store=store)
    with pytest.raises(GuestError, match="stack overflow"):
        g.call("recurse", 0)


@pytest.mark.parametrize("wat", [
    # wrong signature of a known import
    """(module (import "env" "realm_read_tensor" (func (param i32) (result i32))) (memory (export "memory") 1))""",
    """(module (import "env" "realm_log" (func (param i32 i32 i32) (result i64))) (memory (export "memory") 1))""",
    # an import the host does not provide
    """(module (import "env" "system" (func (param i32) (result i32))) (memory (export "memory") 1))""",
    """(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))""",
    # an imported memory (the guest must own its memory)
    """(module (import "env" "memory" (memory 1)))""",
])
def test_bad_imports_are_rejected_at_link_time(store, wat):
    with pytest.raises(GuestError, match="instantiate"):
        Guest(wat, model_store=store)


def test_guest_without_memory_is_rejected(store):
    with pytest.raises(GuestError, match="memory"):
        Guest("""(module (func (export "f")))""", model_store=store)


def test_trap_in_start_function(store):
    with pytest.raises(GuestError, match="trap"):
        Guest("""(module (memory (export "memory") 1) (func $s unreachable) (start $s))""", model_store=store)


def test_guest_close_releases_references(store):
    h = Proxy(store)
    assert store.holders(store.model_id) == {h.g.holder: 1}
    h.g.close()
    assert store.holders(store.model_id) == {}
    with pytest.raises(GuestError, match="closed"):
        h.g.call("grow", 0)


def test_corrupt_module_cache_is_recompiled(store, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("REALM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "_modules", {})
    wat = GROW.replace("(param i32)", "(param $n i32)")  # unique bytes for this test
    runtime.load_module(wat)
    files = list((tmp_path / "wasm").glob("*.cwasm"))
    assert len(files) == 1
    for garbage in (b"", b"junk", files[0].read_bytes()[:-100], os.urandom(5000)):
        files[0].write_bytes(garbage)
        runtime._modules.clear()
        with caplog.at_level(logging.WARNING, logger="realm.host"):
            g = Guest(wat, model_store=store)
        assert g.call("grow", 0) == 1
    assert files[0].read_bytes()[:len(runtime._CACHE_MAGIC)] == runtime._CACHE_MAGIC


def test_module_cache_keeps_the_most_recently_used(tmp_path, monkeypatch):
    """Many distinct modules (a tenant can bring its own) cannot grow the disk cache without bound:
    it keeps MAX_CACHED_MODULES files, and a module used again is kept over older ones."""
    monkeypatch.setenv("REALM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "_modules", {})
    monkeypatch.setattr(runtime, "MAX_CACHED_MODULES", 4)
    wats = [f'(module (memory (export "memory") 1) (func (export "f{i}") (result i32) (i32.const {i})))'
            for i in range(7)]
    folder = tmp_path / "wasm"
    runtime.load_module(wats[0])
    first = list(folder.glob("*.cwasm"))
    assert len(first) == 1
    old = time.time() - 3600
    for i, wat in enumerate(wats[1:4], start=1):  # three more, each older-looking than the next
        runtime.load_module(wat)
    for k, p in enumerate(sorted(folder.glob("*.cwasm"), key=lambda p: p.stat().st_mtime)):
        os.utime(p, (old + k, old + k))
    runtime._modules.clear()
    runtime.load_module(wats[0])  # read back from disk: now the most recently used
    for wat in wats[4:]:
        runtime.load_module(wat)
    files = set(folder.glob("*.cwasm"))
    assert len(files) == 4
    assert first[0] in files


@pytest.mark.parametrize("wat", [
    """(module (memory (export "memory") 1) (table 100000000 funcref))""",  # ~800 MB of host memory
    """(module (memory (export "memory") 1) (table 10 funcref)
        (func (export "grow") (result i32) (table.grow (ref.null func) (i32.const 50000000))))""",
])
def test_huge_tables_are_refused(store, wat):
    try:
        g = Guest(wat, model_store=store)
    except GuestError as e:
        assert "instantiate" in str(e)
        return
    assert g.call("grow") == -1  # table.grow past the limit fails inside the guest


# ---- the peer functions (main guest <-> shards of one engine) --------------------------------------


class FakePeers:
    """Stands in for an engine's shards behind `realm_peers_begin` / `realm_peers_end`: records
    what reached it; `end` writes 1.0 into each output row range through the host's checked `dst`."""

    max_cols = 64

    def __init__(self):
        self.calls: list = []
        self.abandoned = 0

    def begin(self, group, layer, nt, cols, data):
        self.calls.append(("begin", group, layer, nt, cols, len(data)))
        return 1

    def end(self, outs, dst):
        self.calls.append(("end", outs))
        for out_ptr, stride, rows in outs:
            addr = dst(out_ptr, 4 * rows)  # raises the host's ERR_BOUNDS for a bad range
            import ctypes
            ctypes.memmove(addr, np.ones(rows, np.float32).tobytes(), 4 * rows)
        return 0

    def abandon(self):
        self.abandoned += 1


def peer_outs(*descs) -> bytes:
    return b"".join(abi.PEER_OUT.pack(*d) for d in descs)


def test_peer_functions_without_peers_are_unsupported(store):
    h = Proxy(store)
    assert h.peers_begin(0, 0, OUT_AT, 1, 16) == Err.ERR_UNSUPPORTED
    assert h.peers_end(OUT_AT, 1) == Err.ERR_UNSUPPORTED
    assert h.peer_wait(0) == Err.ERR_UNSUPPORTED  # not a shard either
    assert h.peer_notify() == Err.ERR_UNSUPPORTED
    assert h.g.trapped is None
    h.g.close()


@pytest.mark.parametrize("nt, cols, ptr, code", [
    (0, 16, OUT_AT, Err.ERR_BAD_ARG),
    (65, 16, OUT_AT, Err.ERR_BAD_ARG),  # more tokens than a guest batch
    (-1, 16, OUT_AT, Err.ERR_BOUNDS),  # a negative count, as every negative length
    (1, 0, OUT_AT, Err.ERR_BAD_ARG),
    (1, 65, OUT_AT, Err.ERR_BAD_ARG),  # wider than any matrix of the model
    (1, -1, OUT_AT, Err.ERR_BOUNDS),
    (64, 64, MEM - 4 * 64 * 64 + 4, Err.ERR_BOUNDS),  # the input runs past the end of memory
    (1, 16, s32(0xFFFFFFF0), Err.ERR_BOUNDS),
])
def test_peers_begin_checks_its_input(store, nt, cols, ptr, code):
    h = Proxy(store)
    peers = h.g.tenant.peers = FakePeers()
    assert h.peers_begin(1, 2, ptr, nt, cols) == code
    assert [c for c in peers.calls if c[0] == "begin"] == []  # nothing reached the shards
    assert h.peers_begin(1, 2, MEM - 4 * 64 * 64, 64, 64) == 1  # the last 16 KiB: fine
    assert peers.calls[-1] == ("begin", 1, 2, 64, 64, 4 * 64 * 64)
    assert h.g.trapped is None
    h.g.close()


@pytest.mark.parametrize("outs, n, code", [
    (peer_outs((OUT_AT, 8, 8, 0)), 0, Err.ERR_BAD_ARG),  # no outputs
    (peer_outs(*[(OUT_AT, 8, 8, 0)] * 4), 4, Err.ERR_BAD_ARG),  # more than a group has
    (peer_outs((OUT_AT, 8, 8, 1)), 1, Err.ERR_BAD_ARG),  # reserved word set
    (peer_outs((OUT_AT, 4, 8, 0)), 1, Err.ERR_BAD_ARG),  # stride below the row count
    (peer_outs((OUT_AT, 8, 0, 0)), 1, Err.ERR_BAD_ARG),  # no rows
    (peer_outs((OUT_AT, 8, -8, 0)), 1, Err.ERR_BAD_ARG),
    (peer_outs((MEM - 16, 8, 8, 0)), 1, Err.ERR_BOUNDS),  # output past the end of memory
    (peer_outs((s32(0xFFFFFFF0), 8, 8, 0)), 1, Err.ERR_BOUNDS),
])
def test_peers_end_checks_its_outputs(store, outs, n, code):
    h = Proxy(store)
    peers = h.g.tenant.peers = FakePeers()
    h.g.write(NAME_AT, outs)
    assert h.peers_end(NAME_AT, n) == code
    assert peers.abandoned >= 1  # whatever the outcome, no shard is left running
    assert h.peers_end(MEM - 8, 1) == Err.ERR_BOUNDS  # the descriptor itself outside memory
    h.g.write(NAME_AT, peer_outs((OUT_AT, 8, 8, 0)))
    assert h.peers_end(NAME_AT, 1) == 0
    assert np.array_equal(h.g.read_array(OUT_AT, np.float32, 8), np.ones(8, np.float32))
    assert h.g.trapped is None
    h.g.close()


def test_a_host_error_in_the_peers_is_err_internal(store, caplog):
    h = Proxy(store)

    class Broken(FakePeers):
        def begin(self, *a):
            raise RuntimeError("boom")

    h.g.tenant.peers = Broken()
    with caplog.at_level(logging.ERROR, logger="realm.host"):
        assert h.peers_begin(0, 0, OUT_AT, 1, 16) == Err.ERR_INTERNAL
    assert "boom" in caplog.text and h.g.trapped is None
    h.g.close()


FAST = """(module
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "spin") (result i32) (loop $l (br $l)) (i32.const 0))
  (func (export "oob") (result i32) (i32.load (i32.const 0x7fffffff)))
  (func (export "wide") (param i64) (result i64) (local.get 0)))"""


def test_fast_call_agrees_with_call_and_traps_alike(store):
    """`Guest.fast_call` (wasmtime's unchecked call, used for the shards) gives what `call` gives,
    stops a runaway guest at its deadline and reports a trap the same way; exports it cannot call
    raw (i64 values) go through `call`."""
    g = Guest(FAST, model_store=store, timeout=TIMEOUT)
    for a, b in [(1, 2), (-5, 3), (0x7FFFFFFF, 1), (-0x80000000, -1)]:
        assert g.fast_call("add", a, b) == g.call("add", a, b)
    assert g.fast_call("wide", 1 << 40) == 1 << 40
    with pytest.raises(GuestError, match="out of bounds"):
        g.fast_call("oob")
    with pytest.raises(GuestError, match="trapped earlier"):
        g.fast_call("add", 1, 2)
    g.close()
    g = Guest(FAST, model_store=store, timeout=TIMEOUT)
    t0 = time.perf_counter()
    with pytest.raises(GuestError, match="deadline"):
        g.fast_call("spin")
    assert time.perf_counter() - t0 < STOP_WITHIN
    g.close()
