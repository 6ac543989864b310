"""Host functions of docs/abi.md, called through a tiny WAT guest that re-exports every import.

Oracles are independent of realm: gguf-py's reader (tensor offsets, raw bytes) and its NumPy
dequantizers; the error table is checked against docs/abi.md and guest_rs/src/abi.rs.
"""

from __future__ import annotations

import logging
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from synth import kquant_dims, make_model  # noqa: E402

from realm.config import ModelConfig  # noqa: E402
from realm.gguf import GGUFFile  # noqa: E402
from realm.host import abi  # noqa: E402
from realm.host.abi import Err  # noqa: E402
from realm.host.runtime import Guest  # noqa: E402
from realm.host.store import ModelStore  # noqa: E402
from realm.quants import GGMLType  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROXY = (ROOT / "tests" / "security" / "wat" / "proxy.wat").read_text()
NAME_AT, OUT_AT, BIG_AT = 0x100, 0x1000, 0x10000  # scratch addresses in the proxy's 1 MiB


def s32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x


class Proxy:
    """A proxy guest holding `model_id`; `h.<name>(...)` calls the host function `realm_<name>`."""

    def __init__(self, store: ModelStore, model_id: int | None = None, **kw):
        self.g = Guest(PROXY, model_store=store, **kw)
        if model_id is not None:
            self.g.acquire(model_id)

    def __getattr__(self, name):
        return lambda *args: self.g.call("call_realm_" + name, *args)

    def name(self, text: str | bytes, at: int = NAME_AT) -> tuple[int, int]:
        data = text.encode() if isinstance(text, str) else text
        self.g.write(at, data)
        return at, len(data)


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("abi")
    paths = {
        "llama_q8_0": make_model(d / "l8.gguf", arch="llama", qtype=GGMLType.Q8_0),
        "gemma_q4_0": make_model(d / "g4.gguf", arch="gemma3", qtype=GGMLType.Q4_0),
    }
    for t in (GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q5_0, GGMLType.F16):
        dims = kquant_dims() if t in (GGMLType.Q4_K, GGMLType.Q6_K) else {}
        paths[t.name] = make_model(d / f"{t.name}.gguf", arch="llama", qtype=t, n_layers=1, vocab_size=64, **dims)
    return paths


@pytest.fixture()
def store():
    st = ModelStore()
    yield st
    st.close()


def test_error_table_matches_the_doc():
    doc = (ROOT / "docs" / "abi.md").read_text()
    rows = dict((name, int(code)) for code, name in re.findall(r"^\|\s*(-\d+)\s*\|\s*`(ERR_\w+)`", doc, re.M))
    assert rows == abi.ERRORS
    assert len(set(abi.ERRORS.values())) == len(abi.ERRORS)


def test_error_table_matches_rust():
    path = ROOT / "guest_rs" / "src" / "abi.rs"
    if not path.exists():
        pytest.skip("guest_rs/src/abi.rs is not there yet")
    rust = {name: int(v) for name, v in re.findall(r"pub const (ERR_\w+)\s*:\s*i32\s*=\s*(-?\d+)\s*;", path.read_text())}
    assert rust == abi.ERRORS


def test_config_layout_matches_rust_and_doc():
    """ModelConfigABI: the word of every field and the flag bits agree in abi.py, abi.rs and docs/abi.md."""
    rust_src = (ROOT / "guest_rs" / "src" / "abi.rs").read_text()
    words = {name.lower(): int(i) for name, i in re.findall(r"pub const (\w+): usize = (\d+);",
                                                           rust_src.split("pub mod config_word")[1].split("}")[0])}
    python = abi.unpack_model_config(bytes(128))
    assert list(python) == sorted(words, key=words.get) and list(words.values()) == list(range(len(words)))
    doc = (ROOT / "docs" / "abi.md").read_text().split("### `ModelConfigABI`")[1].split("## Guest exports")[0]
    doc_words = {name: int(i) for i, name in re.findall(r"^\|\s*(\d+)\s*\|\s*\w+\s*\|\s*`(\w+)`", doc, re.M)}
    assert {k: v for k, v in doc_words.items() if k != "flags"} == {k: v for k, v in words.items() if k != "flags"}
    assert int(re.search(r"ABI_VERSION: u32 = (\d+);", rust_src).group(1)) == abi.ABI_VERSION
    assert f"(version {abi.ABI_VERSION})" in (ROOT / "docs" / "abi.md").read_text()
    rust_flags = {n: 1 << int(b) for n, b in re.findall(r"pub const FLAG_(\w+): u32 = 1 << (\d+);", rust_src)}
    py_flags = {n[5:]: getattr(abi, n) for n in dir(abi) if n.startswith("FLAG_")}
    assert rust_flags == py_flags
    for name, bit in rust_flags.items():
        assert re.search(rf"bit {bit.bit_length() - 1} `{name.lower()}`", doc), name


def test_struct_layouts():
    assert (abi.TENSOR_INFO.size, abi.READ_REQ.size, abi.MODEL_CONFIG.size) == (48, 24, 128)
    assert (abi.SAMPLE_PARAMS.size, abi.GUEST_STATS.size) == (40, 64)
    p = abi.pack_sample_params({"temperature": 0.5, "top_k": 7, "top_p": 0.9, "min_p": 0.1,
                                "repeat_penalty": 1.1, "repeat_last_n": 32}, (1 << 64) - 1)
    assert struct.unpack("<fifffiQQ", p) == (0.5, 7, pytest.approx(0.9), pytest.approx(0.1),
                                             pytest.approx(1.1), 32, (1 << 64) - 1, 0)


def _reader_offsets(path: Path) -> dict[str, tuple[int, int]]:
    r = gguf.GGUFReader(path)
    return {t.name: (int(t.data_offset), int(t.n_bytes)) for t in r.tensors}


def test_tensor_info_and_raw_reads_equal_the_file(store, model_paths):
    path = model_paths["llama_q8_0"]
    mid = store.add(path)
    h = Proxy(store, mid)
    raw = path.read_bytes()
    offsets = _reader_offsets(path)
    reader = gguf.GGUFReader(path)
    for i, t in enumerate(reader.tensors):
        ptr, n = h.name(t.name)
        handle = h.tensor_info(mid, ptr, n, OUT_AT)
        assert handle == i
        info = abi.unpack_tensor_info(h.g.read(OUT_AT, 48))
        ne = tuple(int(x) for x in t.shape) + (1,) * (4 - len(t.shape))
        assert info == {"ggml_type": int(t.tensor_type), "n_dims": len(t.shape), "ne": ne, "n_bytes": int(t.n_bytes)}
        start, nbytes = offsets[t.name]
        # whole tensor, then a slice in the middle
        assert h.read_tensor(mid, handle, 0, BIG_AT, nbytes) == nbytes
        assert h.g.read(BIG_AT, nbytes) == raw[start:start + nbytes]
        off, ln = nbytes // 3, nbytes // 4
        assert h.read_tensor(mid, handle, off, BIG_AT, ln) == ln
        assert h.g.read(BIG_AT, ln) == raw[start + off:start + off + ln]
    assert h.read_tensor(mid, 0, 0, BIG_AT, 0) == 0  # zero length is fine


def test_batched_reads(store, model_paths):
    path = model_paths["gemma_q4_0"]
    mid = store.add(path)
    h = Proxy(store, mid)
    raw = path.read_bytes()
    offsets = _reader_offsets(path)
    names = list(offsets)[:6]
    reqs, expect, out = [], [], BIG_AT
    for i, name in enumerate(names):
        ptr, n = h.name(name)
        handle = h.tensor_info(mid, ptr, n, OUT_AT)
        start, nbytes = offsets[name]
        ln = min(nbytes, 100 + i)
        reqs.append(abi.pack_read_req(handle, out, 1, ln - 1))
        expect.append((out, raw[start + 1:start + ln]))
        out += ln
    h.g.write(OUT_AT, b"".join(reqs))
    total = h.read_tensors(mid, OUT_AT, len(reqs))
    assert total == sum(len(e) for _, e in expect)
    for ptr, data in expect:
        assert h.g.read(ptr, len(data)) == data
    assert h.read_tensors(mid, OUT_AT, 0) == 0
    # one bad request: nothing is copied
    h.g.write(BIG_AT, b"\0" * 64)
    bad = [reqs[0], abi.pack_read_req(10_000, BIG_AT, 0, 4)]
    h.g.write(OUT_AT, b"".join(bad))
    assert h.read_tensors(mid, OUT_AT, 2) == Err.ERR_NO_TENSOR
    assert h.g.read(BIG_AT, 64) == b"\0" * 64
    # reserved word must be 0; too many requests
    h.g.write(OUT_AT, abi.READ_REQ.pack(0, BIG_AT, 0, 4, 7))
    assert h.read_tensors(mid, OUT_AT, 1) == Err.ERR_BAD_ARG
    assert h.read_tensors(mid, OUT_AT, abi.MAX_READ_REQS + 1) == Err.ERR_BAD_ARG


@pytest.mark.parametrize("key", ["llama_q8_0", "gemma_q4_0", "Q4_K", "Q6_K", "Q5_0", "F16"])
def test_get_tensor_equals_gguf_dequantize(store, model_paths, key):
    path = model_paths[key]
    mid = store.add(path)
    h = Proxy(store, mid, memory_budget=64 << 20)
    h.g.call("grow", 48)  # 4 MiB for the largest f32 tensor
    reader = gguf.GGUFReader(path)
    for t in reader.tensors:
        expect = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        ptr, n = h.name(t.name)
        nb = 4 * expect.size
        assert h.get_tensor(mid, ptr, n, BIG_AT, nb - 1) == Err.ERR_TOO_SMALL
        assert h.get_tensor(mid, ptr, n, BIG_AT, nb + 100) == nb
        got = h.g.read_array(BIG_AT, np.float32, expect.size)
        np.testing.assert_array_equal(got, expect, err_msg=t.name)


def test_model_info_and_config(store, model_paths):
    path = model_paths["gemma_q4_0"]
    mid = store.add(path)
    h = Proxy(store, mid)
    assert h.get_model_info(mid, OUT_AT, OUT_AT + 8) == 0
    reader = gguf.GGUFReader(path)
    assert struct.unpack("<I", h.g.read(OUT_AT, 4))[0] == len(reader.tensors)
    assert struct.unpack("<Q", h.g.read(OUT_AT + 8, 8))[0] == sum(int(t.n_bytes) for t in reader.tensors)
    assert h.get_config(mid, OUT_AT, 127) == Err.ERR_TOO_SMALL
    assert h.get_config(mid, OUT_AT, 4096) == 128
    words = abi.unpack_model_config(h.g.read(OUT_AT, 128))
    with GGUFFile(path) as gf:
        cfg = ModelConfig.from_gguf(gf)
    assert words["abi_version"] == abi.ABI_VERSION == 2
    for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size",
              "context_length", "rope_dim", "rope_style", "activation", "sliding_window", "sliding_window_pattern"):
        assert words[k] == getattr(cfg, k), k
    for k in ("rope_theta", "rope_theta_local", "rope_freq_scale", "norm_eps", "embed_scale", "attn_scale",
              "final_logit_softcap"):
        assert words[k] == np.float32(getattr(cfg, k)), k
    assert words["flags"] == 1 * cfg.qk_norm + 2 * cfg.post_norms + 4 * cfg.tied_output == 7
    assert (words["rope_factors"], words["rope_attn_factor"]) == (0, 1.0)
    assert words["rope_orig_ctx"] == cfg.context_length
    assert h.g.read(OUT_AT + 100, 28) == b"\0" * 28


def test_store_model_from_guest_memory(store, model_paths):
    path = model_paths["llama_q8_0"]
    image = path.read_bytes()
    h = Proxy(store)
    h.g.write(BIG_AT, image)
    mid = h.store_model(BIG_AT, len(image), 0)
    assert mid > 0
    assert mid == store.add(path)  # the consumer's copy of the same file is the same one copy
    assert store.stats()["n_copies"] == 1
    # the storing guest holds it and can read it
    ptr, n = h.name("token_embd.weight")
    assert h.tensor_info(mid, ptr, n, OUT_AT) >= 0
    # explicit ids; the same id for other content is a conflict
    assert h.store_model(BIG_AT, len(image), 77) == 77
    other = model_paths["gemma_q4_0"].read_bytes()
    h.g.write(BIG_AT, other)
    assert h.store_model(BIG_AT, len(other), 77) == Err.ERR_ID_CONFLICT
    assert h.store_model(BIG_AT, len(other), -5) == Err.ERR_BAD_ARG


def test_store_model_image_is_freed_with_its_last_holder(store, model_paths):
    image = model_paths["gemma_q4_0"].read_bytes()
    h = Proxy(store)
    h.g.write(BIG_AT, image)
    mid = h.store_model(BIG_AT, len(image), 0)
    assert mid in store
    assert h.remove_model(mid) == 0
    assert mid not in store and store.stats()["n_copies"] == 0
    assert h.remove_model(mid) == Err.ERR_NO_MODEL


def test_remove_model_drops_only_this_guests_reference(store, model_paths):
    mid = store.add(model_paths["llama_q8_0"])
    h1, h2 = Proxy(store, mid), Proxy(store, mid)
    assert h1.remove_model(mid) == 0
    ptr, n = h1.name("token_embd.weight")
    assert h1.tensor_info(mid, ptr, n, OUT_AT) == Err.ERR_NO_MODEL
    ptr, n = h2.name("token_embd.weight")
    assert h2.tensor_info(mid, ptr, n, OUT_AT) >= 0
    h2.g.close()
    assert store.holders(mid) == {}


def test_log(store, caplog):
    h = Proxy(store)
    msg = "héllo from the guest".encode()
    h.g.write(OUT_AT, msg)
    with caplog.at_level(logging.DEBUG, logger="realm.host"):
        for level in range(4):
            assert h.log(level, OUT_AT, len(msg)) == 0
        h.g.write(BIG_AT, b"x" * 5000)
        assert h.log(2, BIG_AT, 5000) == 0
    texts = [r.getMessage() for r in caplog.records if r.name == "realm.host"]
    assert sum("héllo from the guest" in t for t in texts) == 4
    long = [t for t in texts if "xxx" in t][0]
    assert long.count("x") <= abi.LOG_MAX_BYTES + 10 and "truncated" in long
    levels = [r.levelno for r in caplog.records if "héllo" in r.getMessage()]
    assert levels == [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]
    assert h.log(4, OUT_AT, len(msg)) == Err.ERR_BAD_ARG
    assert h.log(-1, OUT_AT, len(msg)) == Err.ERR_BAD_ARG


def test_log_is_rate_limited(store, caplog):
    h = Proxy(store)
    h.g.write(OUT_AT, b"spam")
    with caplog.at_level(logging.DEBUG, logger="realm.host"):
        for _ in range(1000):
            assert h.log(1, OUT_AT, 4) == 0
    n = sum(1 for r in caplog.records if r.getMessage().endswith("spam"))
    assert 50 <= n < 1000


def test_host_calls_and_bytes_are_counted(store, model_paths):
    mid = store.add(model_paths["llama_q8_0"])
    h = Proxy(store, mid)
    ptr, n = h.name("token_embd.weight")
    handle = h.tensor_info(mid, ptr, n, OUT_AT)
    for _ in range(10):
        assert h.read_tensor(mid, handle, 0, BIG_AT, 1000) == 1000
    assert h.g.tenant.host_calls == 11
    assert store.stats()["models"][mid]["bytes_served"] == 10_000
    assert store.holder_stats(h.g.holder)["bytes_read"] == 10_000


def test_host_call_cost(store, model_paths, record_property):
    """Not a timing assertion: records µs per raw-read host call for the report."""
    mid = store.add(model_paths["llama_q8_0"])
    h = Proxy(store, mid)
    ptr, n = h.name("token_embd.weight")
    handle = h.tensor_info(mid, ptr, n, OUT_AT)
    t0 = time.perf_counter()
    for _ in range(200):
        h.read_tensor(mid, handle, 0, BIG_AT, 4096)
    record_property("python_to_host_roundtrip_us", (time.perf_counter() - t0) / 200 * 1e6)


@pytest.mark.parametrize("safe", ["1", "0"])
def test_both_hostcall_paths_agree(store, model_paths, monkeypatch, safe):
    """The raw (unchecked) callback path and wasmtime-py's public path give the same answers."""
    monkeypatch.setenv("REALM_WASM_SAFE_HOSTCALLS", safe)
    path = model_paths["llama_q8_0"]
    mid = store.add(path)
    h = Proxy(store, mid)
    assert h.g.raw_hostcalls == (safe == "0" and runtime_raw_available())
    offsets = _reader_offsets(path)
    start, nbytes = offsets["blk.1.ffn_down.weight"]
    ptr, n = h.name("blk.1.ffn_down.weight")
    handle = h.tensor_info(mid, ptr, n, OUT_AT)
    assert h.read_tensor(mid, handle, 7, BIG_AT, nbytes - 7) == nbytes - 7
    assert h.g.read(BIG_AT, nbytes - 7) == path.read_bytes()[start + 7:start + nbytes]
    assert h.read_tensor(mid, handle, -1, BIG_AT, 4) == Err.ERR_RANGE
    assert h.read_tensor(mid, handle, 0, s32(0xFFFFFFF0), 32) == Err.ERR_BOUNDS
    image = model_paths["gemma_q4_0"].read_bytes()
    h.g.write(BIG_AT, image)
    big_id = h.store_model(BIG_AT, len(image), (1 << 63) - 1)  # an i64 result at the top of the range
    assert big_id == (1 << 63) - 1


def runtime_raw_available() -> bool:
    from realm.host import wasmtime_adapter

    return wasmtime_adapter._RAW_OK


def test_keyboard_interrupt_in_a_host_call_propagates(store, model_paths, monkeypatch):
    mid = store.add(model_paths["llama_q8_0"])
    h = Proxy(store, mid)
    ptr, n = h.name("token_embd.weight")
    handle = h.tensor_info(mid, ptr, n, OUT_AT)

    def interrupt(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "charge", interrupt)
    with pytest.raises(KeyboardInterrupt):
        h.read_tensor(mid, handle, 0, BIG_AT, 4)
