"""The shipped Rust guest's kernels, called directly through its test exports (docs/abi.md).

The guest wasm is instantiated with wasmtime and stub `env` imports (the kernel exports never call the
host). Oracles: NumPy's float16, gguf-py's dequantizers (bit-exact) and float64 NumPy matvecs.
Also checks that realm/guest/SOURCE_HASH matches guest_rs/ (rebuild with guest_rs/build.sh).
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from realm.quants import LAYOUTS, GGMLType, block_size_and_bytes

wasmtime = pytest.importorskip("wasmtime")

ROOT = Path(__file__).resolve().parents[2]
WASM = ROOT / "realm" / "guest" / "realm_guest.wasm"
ERR_INTERNAL = -11

GUEST_TYPES = [
    GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
    GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K,
    GGMLType.Q6_K,
]

# |guest - float64 dequantize(w) @ x| <= tol * sum_i |w_i x_i| per row. f32-activation kernels: f32
# accumulation error only. Integer kernels (Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K) quantize x to int16
# per block of 32 (error <= 2^-16 of the block's max |x| per element), then sum exactly.
XQ_TYPES = {GGMLType.Q4_0, GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K}
MATVEC_TOL = {t: (2e-4 if t in XQ_TYPES else 1e-5) for t in GUEST_TYPES}
SCALAR_VS_SIMD_TOL = 1e-5  # same measure, scalar twin vs SIMD128 (same integer sums, other f32 order)


class Guest:
    """The guest instance with helpers to move arrays in and out of its memory."""

    def __init__(self) -> None:
        engine = wasmtime.Engine()
        self.store = wasmtime.Store(engine)
        module = wasmtime.Module.from_file(engine, str(WASM))
        imports = []
        for imp in module.imports:
            assert imp.module == "env", imp.module
            ft = imp.type
            results = list(ft.results)

            def stub(*args, _results=results):
                return ERR_INTERNAL if _results else None

            imports.append(wasmtime.Func(self.store, ft, stub))
        self.instance = wasmtime.Instance(self.store, module, imports)
        self.exports = self.instance.exports(self.store)
        self.memory = self.exports["memory"]

    def call(self, name: str, *args):
        return self.exports[name](self.store, *args)

    def put(self, data: np.ndarray) -> int:
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        ptr = self.call("realm_alloc", max(raw.size, 1))
        assert ptr > 0
        base = self.memory.data_ptr(self.store)
        ctypes.memmove(ctypes.addressof(base.contents) + ptr, raw.ctypes.data, raw.size)
        return ptr

    def get(self, ptr: int, n: int, dtype) -> np.ndarray:
        nbytes = n * np.dtype(dtype).itemsize
        base = self.memory.data_ptr(self.store)
        buf = (ctypes.c_ubyte * nbytes).from_address(ctypes.addressof(base.contents) + ptr)
        return np.frombuffer(bytes(buf), dtype=dtype).copy()

    def alloc(self, nbytes: int) -> int:
        ptr = self.call("realm_alloc", max(nbytes, 1))
        assert ptr > 0
        return ptr


@pytest.fixture(scope="module")
def guest() -> Guest:
    if not WASM.is_file():
        pytest.fail(f"{WASM} is missing: run guest_rs/build.sh")
    return Guest()


def random_blocks(t: GGMLType, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes for `n_blocks` blocks of `t` with every f16/f32/bf16 field finite."""
    layout = LAYOUTS[t]
    bs, ts = block_size_and_bytes(t)
    raw = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    off = 0
    for name, dtype, count in layout.fields:
        size = {"f32": 4, "f16": 2, "bf16": 2, "u8": 1, "i8": 1, "i16": 2}[dtype] * count
        if dtype == "f16":
            vals = rng.uniform(-2.0, 2.0, size=(n_blocks, count)).astype(np.float16)
            if layout.block_size > 1:
                vals = (vals * np.float16(0.01)).astype(np.float16)  # block scales: realistic sizes
            raw[:, off:off + size] = vals.view(np.uint8).reshape(n_blocks, size)
        elif dtype == "f32":
            vals = rng.uniform(-2.0, 2.0, size=(n_blocks, count)).astype(np.float32)
            raw[:, off:off + size] = vals.view(np.uint8).reshape(n_blocks, size)
        elif dtype == "bf16":
            vals = rng.uniform(-2.0, 2.0, size=(n_blocks, count)).astype(np.float32)
            raw[:, off:off + size] = (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_blocks, size)
        off += size
    assert off == ts
    return raw


def test_f16_to_f32_all_bit_patterns(guest):
    """All 65,536 patterns through the F16 dequantizer (one call to `f16_to_f32` each), and a sample
    through the scalar export; both against NumPy's float16 (NaN-aware, otherwise bit-exact)."""
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    want = bits.view(np.float16).astype(np.float32)
    src, dst = guest.put(bits), guest.alloc(65536 * 4)
    assert guest.call("realm_debug_dequant", int(GGMLType.F16), src, 65536, dst) == 0
    sample = np.random.default_rng(3).choice(65536, 2048, replace=False)
    f = guest.exports["realm_debug_f16_to_f32"]
    for got, idx in ((guest.get(dst, 65536, np.float32), bits.astype(np.int64)),
                     (np.array([f(guest.store, int(b)) for b in sample], dtype=np.float32), sample)):
        ref = want[idx]
        nan = np.isnan(ref)
        assert np.array_equal(np.isnan(got), nan)
        bad = np.nonzero(got[~nan].view(np.uint32) != ref[~nan].view(np.uint32))[0]
        assert bad.size == 0, f"{bad.size} patterns differ, first {idx[~nan][bad[0]]:#06x}"


def test_f32_to_f16_round_to_nearest_even(guest):
    rng = np.random.default_rng(1)
    vals = np.concatenate([
        rng.standard_normal(3000).astype(np.float32) * np.float32(10.0) ** rng.integers(-8, 5, 3000),
        np.array([0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6, np.inf, -np.inf, 6e-8, 3e-8, 2.9e-8], np.float32),
        # exact halfway cases between adjacent halves
        (np.arange(0, 2048, dtype=np.uint16).view(np.float16).astype(np.float32)
         + np.float32(2.0 ** -25)),
    ]).astype(np.float32)
    f = guest.exports["realm_debug_f32_to_f16"]
    got = np.array([f(guest.store, float(v)) for v in vals], dtype=np.int64).astype(np.uint16)
    with np.errstate(over="ignore"):
        want = vals.astype(np.float16).view(np.uint16)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, f"{bad.size} mismatches, first {vals[bad[0]]!r}: {got[bad[0]]:#06x} != {want[bad[0]]:#06x}"


@pytest.mark.parametrize("t", GUEST_TYPES, ids=lambda t: t.name)
def test_dequantize_bit_exact(guest, t):
    gq = pytest.importorskip("gguf.quants")
    rng = np.random.default_rng(int(t))
    bs, ts = block_size_and_bytes(t)
    n_blocks = 64 if bs > 1 else 512
    raw = random_blocks(t, n_blocks, rng)
    src = guest.put(raw)
    dst = guest.alloc(n_blocks * bs * 4)
    assert guest.call("realm_debug_dequant", int(t), src, n_blocks, dst) == 0
    got = guest.get(dst, n_blocks * bs, np.float32)
    want = gq.dequantize(raw.reshape(-1), t).astype(np.float32).reshape(-1)
    assert got.shape == want.shape
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    bad = np.nonzero(~same)[0]
    assert bad.size == 0, f"{t.name}: {bad.size} elements differ, first at {bad[0]}: {got[bad[0]]} != {want[bad[0]]}"
    guest.call("realm_free", src, raw.size)
    guest.call("realm_free", dst, n_blocks * bs * 4)


@pytest.mark.parametrize("t", GUEST_TYPES, ids=lambda t: t.name)
def test_matvec_scalar_simd_and_float64(guest, t):
    gq = pytest.importorskip("gguf.quants")
    rng = np.random.default_rng(100 + int(t))
    bs, ts = block_size_and_bytes(t)
    rows, cols = 37, 512 if bs > 1 else 77
    w = random_blocks(t, rows * cols // bs, rng)
    x = rng.standard_normal(cols).astype(np.float32)
    wp, xp = guest.put(w), guest.put(x)
    outs = []
    for simd in (0, 1):
        op = guest.alloc(rows * 4)
        assert guest.call("realm_debug_matvec", int(t), wp, rows, cols, xp, op, simd) == 0
        outs.append(guest.get(op, rows, np.float32))
    scalar, simd = outs
    wf = gq.dequantize(w.reshape(-1), t).astype(np.float64).reshape(rows, cols)
    want = wf @ x.astype(np.float64)
    scale = np.abs(wf) @ np.abs(x.astype(np.float64)) + 1e-30
    for name, got, tol in (("scalar", scalar, MATVEC_TOL[t]), ("simd", simd, MATVEC_TOL[t])):
        err = np.abs(got - want) / scale
        worst = int(np.argmax(err))
        assert err[worst] <= tol, f"{t.name} {name}: row {worst} rel err {err[worst]:.3g} > {tol}"
    err = np.abs(scalar.astype(np.float64) - simd) / scale
    assert err.max() <= SCALAR_VS_SIMD_TOL, f"{t.name}: scalar vs simd row {int(np.argmax(err))} rel err {err.max():.3g}"


@pytest.mark.parametrize("t", GUEST_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("nt", [1, 3, 6])
def test_matmul_paths_vs_float64(guest, t, nt):
    """The engine's matmul (4-row decode kernels, 4-token prefill kernels, tails) against float64 NumPy."""
    gq = pytest.importorskip("gguf.quants")
    rng = np.random.default_rng(200 + int(t) + nt)
    bs, ts = block_size_and_bytes(t)
    rows, cols = 39, 512 if bs > 1 else 77
    w = random_blocks(t, rows * cols // bs, rng)
    x = rng.standard_normal((nt, cols)).astype(np.float32)
    wp, xp, op = guest.put(w), guest.put(x), guest.alloc(nt * rows * 4)
    assert guest.call("realm_debug_matmul", int(t), wp, rows, cols, xp, nt, op) == 0
    got = guest.get(op, nt * rows, np.float32).reshape(nt, rows)
    wf = gq.dequantize(w.reshape(-1), t).astype(np.float64).reshape(rows, cols)
    want = x.astype(np.float64) @ wf.T
    scale = np.abs(x.astype(np.float64)) @ np.abs(wf).T + 1e-30
    err = np.abs(got - want) / scale
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    assert err[worst] <= MATVEC_TOL[t], f"{t.name} nt={nt}: (token, row) {worst} rel err {err[worst]:.3g}"


def test_debug_exports_reject_bad_input(guest):
    assert guest.call("realm_debug_dequant", 99, 8, 1, 8) == -8  # ERR_UNSUPPORTED
    assert guest.call("realm_debug_dequant", int(GGMLType.Q8_0), 0x7FFFFFF0, 4, 8) == -1  # ERR_BOUNDS
    assert guest.call("realm_debug_matvec", int(GGMLType.Q4_K), 8, 1, 100, 8, 8, 1) == -9  # cols % 256
    # engine exports before realm_init
    assert guest.call("realm_eval", 8, 1, 0) == -21  # ERR_NOT_INIT
    assert guest.call("realm_reset") == -21


def test_source_hash_matches_sources():
    spec = importlib.util.spec_from_file_location("guest_source_hash", ROOT / "guest_rs" / "source_hash.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    want = (ROOT / "realm" / "guest" / "SOURCE_HASH").read_text().strip()
    got = mod.source_hash(ROOT / "guest_rs")
    assert got == want, ("guest_rs/ changed since realm/guest/realm_guest.wasm and realm_meta.wasm were built: "
                         "run guest_rs/build.sh")
    # the rule covers both crates: the guest and the metadata module (guest_rs/meta/)
    files = mod.source_files(ROOT / "guest_rs")
    for name in ("Cargo.toml", "src/lib.rs", "meta/Cargo.toml", "meta/Cargo.lock", "meta/src/lib.rs"):
        assert name in files, name
    assert (ROOT / "realm" / "guest" / "realm_meta.wasm").is_file()


def test_wasm_size_under_4mb():
    assert WASM.stat().st_size < 4 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# The guest's engine exports through the host (realm.engines.wasm): sampler and memory model.

@pytest.fixture(scope="module")
def synth_engine(tmp_path_factory):
    pytest.importorskip("gguf")
    from synth import make_model

    from realm.config import ModelConfig
    from realm.engines.wasm import WasmEngine
    from realm.gguf import GGUFFile
    from realm.host.store import ModelStore

    # 6 layers of ~1 MB of Q8_0 weights: more than a 3 MiB budget can pin
    path = make_model(tmp_path_factory.mktemp("guest") / "m.gguf", arch="gemma3", qtype=GGMLType.Q8_0,
                      dim=256, hidden_dim=1024, head_dim=64, vocab_size=600, seed=3)
    f = GGUFFile(path)
    config = ModelConfig.from_gguf(f)
    store = ModelStore()

    def make(**kw):
        return WasmEngine(f, config, store=store, **kw)

    yield f, config, make
    f.close()


def test_realm_sample_matches_python_sampler(synth_engine):
    from realm.sampling import SamplingParams, SplitMix64, sample

    _, config, make = synth_engine
    eng = make(n_ctx=64)
    try:
        history = [int(t) for t in np.random.default_rng(5).integers(0, config.vocab_size, 20)]
        logits = eng.eval(history)
        n = 0
        for temperature in (0.0, 0.5, 1.0, 2.0):
            for top_k in (0, 1, 5, 40):
                for top_p, min_p in ((1.0, 0.0), (0.5, 0.0), (0.95, 0.05), (1.0, 0.3)):
                    for penalty in (1.0, 1.3):
                        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                                repeat_penalty=penalty, repeat_last_n=8)
                        for seed in (0, 1, 2**63 + 5):
                            token, state = eng.sample(params, seed)
                            rng = SplitMix64(seed)
                            want = sample(logits, history, params, rng)
                            assert (token, state) == (want, rng.state), f"{params} seed {seed}"
                            n += 1
        assert n == 4 * 4 * 4 * 2 * 3
    finally:
        eng.close()


def test_memory_budget_and_residency(synth_engine):
    """A small budget streams weights and stays under it; a large one makes everything resident."""
    _, config, make = synth_engine
    ids = [1, 5, 9, 100, 200, 7, 3, 4, 5, 6, 7, 8]
    small = make(n_ctx=64, memory_budget=3 << 20)
    large = make(n_ctx=64, memory_budget=64 << 20)
    try:
        a, b = small.eval(ids, all_logits=True), large.eval(ids, all_logits=True)
        assert np.array_equal(a, b)  # same kernels whatever is cached
        before = large.stats()
        large.eval([3])
        after = large.stats()
        assert after["bytes_fetched"] == before["bytes_fetched"], "a resident model fetched weights"
        before = small.stats()
        small.eval([3])
        after = small.stats()
        assert after["bytes_fetched"] > before["bytes_fetched"]
        assert after["host_calls"] - before["host_calls"] < 200
        assert after["peak_memory"] <= 3 << 20
    finally:
        small.close()
        large.close()


@pytest.mark.slow
def test_model_over_4gib_in_64mib_guest(tmp_path):
    """A sparse synthetic llama whose token_embd is 4.35 GB (> 2^32 bytes, benchmarks/bench_big_model.py)
    through a guest with the default 64 MiB budget: tensor offsets past 2^32 (prompt rows and the
    streamed output matrix) are read, memory stays within the budget, and the logits equal a float64
    NumPy forward pass (exactly 0 on the all-zero rows). ~30-40 s, mostly the store hashing 4.4 GB of
    page cache (the file itself takes ~34 MB of disk)."""
    from realm.config import ModelConfig
    from realm.engines import create_engine
    from realm.gguf import GGUFFile

    spec = importlib.util.spec_from_file_location("bench_big_model", ROOT / "benchmarks" / "bench_big_model.py")
    big = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(big)
    vocab, dim = 2_000_000, 2048
    row_bytes = dim // 32 * 34
    prompt = [5, (1 << 32) // row_bytes + 1, vocab - 1]  # the last two rows start past byte 2^32
    path = tmp_path / "big.gguf"
    layout = big.write_sparse_model(path, vocab, dim, 1024, 16, 4, prompt)
    assert layout["embd_bytes"] > 1 << 32
    budget = 64 << 20
    try:
        with GGUFFile(path) as f:
            config = ModelConfig.from_gguf(f)
            engine = create_engine("wasm", f, config, n_ctx=8, memory_budget=budget)
            try:
                logits = engine.eval(prompt)
                stats = engine.stats()
            finally:
                engine.close()
            nz = layout["nonzero_rows"]
            want = big.numpy_logits(f, config, prompt, nz)
    finally:
        path.unlink()  # its 4.4 GB of page cache go with it
    assert stats["bytes_fetched"] > 1 << 32
    assert stats["peak_memory"] <= budget
    zero = np.ones(vocab, bool)
    zero[nz] = False
    assert np.isfinite(logits).all()
    assert (logits[zero] == 0).all()
    err = np.abs(logits[nz] - want).max() / np.abs(want).max()
    assert err < 1e-2, err
