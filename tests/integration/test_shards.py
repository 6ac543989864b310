"""Shards of the wasm engine (`threads` > 1), end to end and through the raw guest exports.

With shards the rows of every layer matrix and of the output matrix are split between guest
instances; every value must come out bit for bit as with `threads=1` (prefill, decode,
all-position logits, greedy runs, guest-side sampling), resident or streamed, with the shards
serving a mailbox or called per matrix group. Also: the memory budget is the engine's total, every
instance holds the model in the store until `close()`, and the exports behind the feature
(`realm_init_main`, `realm_init_shard`, `realm_peer_run`, `realm_peer_serve`, `realm_eval` mode 2,
`realm_hidden_ptr`, `realm_logits_rows`) refuse bad arguments without trapping.
Synthetic models only (tests/synth.py).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from realm.config import ModelConfig
from realm.errors import GuestError
from realm.gguf import GGUFFile
from realm.host import abi
from realm.host.abi import Err
from realm.host.runtime import Guest, default_guest_path, load_module
from realm.quants import GGMLType
from realm.sampling import SamplingParams, SplitMix64, sample

gguf = pytest.importorskip("gguf")
if not default_guest_path().exists():
    pytest.skip("the guest realm/guest/realm_guest.wasm is not built yet", allow_module_level=True)

from realm.engines.wasm import MIN_MAIN_BUDGET, WasmEngine, _row_ranges, default_threads, shard_budget  # noqa: E402
from realm.generate import greedy  # noqa: E402
from realm.host.store import ModelStore  # noqa: E402
from synth import kquant_dims, make_model  # noqa: E402

GUEST = load_module(default_guest_path().read_bytes())  # one compiled guest for every instance
PROMPT = [1, 5, 9, 100, 200, 7, 3, 4, 5, 6, 7, 8]  # 12 > sliding window 4 of the gemma3 models
N_DECODE = 4
N_GREEDY = 5
THREADS = (1, 2, 3)
RESIDENT_BUDGET = 64 << 20
SAMPLERS = [
    SamplingParams(),  # greedy
    SamplingParams(temperature=0.9, seed=7),
    SamplingParams(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, seed=11),  # any row can be drawn
    SamplingParams(temperature=0.7, repeat_penalty=1.3, repeat_last_n=8, seed=3),
]
N_DRAWS = 4

# name -> make_model options. "big" models have an output matrix (vocab, 2048) in F16 of > 16 MiB:
# it cannot be cached by a main guest of MIN_MAIN_BUDGET, so every instance streams its rows.
MODELS = {
    "llama-q4_0": dict(arch="llama", qtype=GGMLType.Q4_0, vocab_size=299, seed=21),  # vocab % 4 = 3
    "llama-q5_0": dict(arch="llama", qtype=GGMLType.Q5_0, vocab_size=300, seed=22),
    "gemma3-q4_k": dict(arch="gemma3", qtype=GGMLType.Q4_K, vocab_size=301, seed=23, **kquant_dims()),
    "gemma3-q8_0": dict(arch="gemma3", qtype=GGMLType.Q8_0, vocab_size=300, seed=24),
    # k/v have 8 rows: with 3 instances the main guest's part of them is empty, the others 4 rows
    "llama-narrow-q8_0": dict(arch="llama", qtype=GGMLType.Q8_0, vocab_size=298, n_heads=4, n_kv_heads=1,
                              head_dim=8, dim=32, hidden_dim=64, seed=27),
    "llama-big-f16": dict(arch="llama", qtype=GGMLType.F16, vocab_size=4099, dim=2048, hidden_dim=256,
                          n_heads=4, n_kv_heads=2, head_dim=64, seed=25),
    "gemma3-big-f16": dict(arch="gemma3", qtype=GGMLType.F16, vocab_size=4097, n_layers=2, dim=2048,
                           hidden_dim=256, n_heads=4, n_kv_heads=2, head_dim=64, seed=26),
}
STREAMED = {"llama-big-f16", "gemma3-big-f16"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """name -> path of the synthetic GGUF (written on first use)."""
    root = tmp_path_factory.mktemp("shards")
    made: dict[str, object] = {}

    def get(name: str):
        if name not in made:
            made[name] = make_model(root / f"{name}.gguf", **MODELS[name])
        return made[name]

    return get


def budget_for(name: str, threads: int, config: ModelConfig) -> int:
    """Resident models: one total budget for every thread count. Streamed: the main guest keeps
    exactly MIN_MAIN_BUDGET whatever the thread count."""
    if name in STREAMED:
        return MIN_MAIN_BUDGET + (threads - 1) * shard_budget(config, threads)
    return RESIDENT_BUDGET


def layer_bytes(f: GGUFFile) -> int:
    """Bytes of the layer matrices (the ones shards split) of a model."""
    names = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    return sum(int(t.n_bytes) for n, t in f.tensors.items()
               if n.startswith("blk.") and n.split(".")[2] in names)


def guest_stats(g) -> dict[str, int]:
    """`GuestStats` of one instance."""
    ptr = g.alloc(abi.GUEST_STATS.size)
    try:
        assert g.call("realm_stats", ptr) == 0
        return abi.unpack_guest_stats(g.read(ptr, abi.GUEST_STATS.size))
    finally:
        g.free(ptr, abi.GUEST_STATS.size)


def holder_bytes(store: ModelStore, eng: WasmEngine) -> list[int]:
    """Bytes each instance (main, then shards) has read from the store so far."""
    return [store.holder_stats(g.holder)["bytes_read"] for g in eng.guests]


def output_row_bytes(f: GGUFFile, config: ModelConfig) -> int:
    t = f.tensors.get("output.weight") or f.tensors["token_embd.weight"]
    return int(t.n_bytes) // config.vocab_size


def run_engine(name: str, f: GGUFFile, config: ModelConfig, threads: int) -> dict:
    """Every output the shards feed, from one engine with `threads` instances."""
    store = ModelStore()
    budget = budget_for(name, threads, config)
    eng = WasmEngine(f, config, wasm=GUEST, n_ctx=64, memory_budget=budget, store=store, threads=threads)
    out: dict = {"threads": eng.threads, "ranges": list(eng._ranges)}
    try:
        out["prefill"] = eng.eval(PROMPT)  # (vocab,)
        draws = []
        for params in SAMPLERS:
            state, rng = params.seed, SplitMix64(params.seed)
            for _ in range(N_DRAWS):
                token, state = eng.sample(params, state)
                assert token == sample(out["prefill"], PROMPT, params, rng), f"{name} threads={threads}: guest draw"
                assert state == rng.state
                draws.append((token, state))
        out["draws"] = draws

        decode, fetched = [], []
        token = int(np.argmax(out["prefill"]))
        for _ in range(N_DECODE):
            before = holder_bytes(store, eng)
            logits = eng.eval([token])  # (vocab,)
            fetched.append([b - a for a, b in zip(before, holder_bytes(store, eng))])
            decode.append(logits)
            token = int(np.argmax(logits))
        out["decode"] = np.stack(decode)  # (N_DECODE, vocab)
        out["fetched"] = fetched  # per decode step, per instance
        out["resident"] = [guest_stats(g)["cache_bytes"] > 0 for g in eng.guests]  # shards: rows kept

        eng.reset()
        out["all"] = eng.eval(PROMPT, all_logits=True)  # (T, vocab)
        out["greedy"] = greedy(eng, PROMPT, N_GREEDY)

        s = eng.stats()
        out["stats"] = s
        assert s["threads"] == eng.threads
        assert eng.memory_size <= budget, f"{name} threads={threads}: {eng.memory_size} > {budget}"
        assert s["peak_memory"] <= budget
        assert s["bytes_fetched"] == sum(holder_bytes(store, eng))
    finally:
        eng.close()
    assert store.stats()["n_copies"] == 0
    return out


def assert_bits_equal(expect: np.ndarray, got: np.ndarray, what: str) -> None:
    """Bit-for-bit equality of float32 arrays; the message names the first differing position."""
    assert expect.shape == got.shape, f"{what}: shape {got.shape} != {expect.shape}"
    diff = np.flatnonzero(expect.view(np.uint32).ravel() != got.view(np.uint32).ravel())
    if diff.size:
        i = np.unravel_index(diff[0], expect.shape)
        pytest.fail(f"{what}: {diff.size} values differ, first at {tuple(int(k) for k in i)}: "
                    f"{got[i]!r} != {expect[i]!r}")


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_are_bit_identical_for_any_thread_count(model_path, name):
    path = model_path(name)
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        row_bytes = output_row_bytes(f, config)
        runs = {t: run_engine(name, f, config, t) for t in THREADS}
    one = runs[1]
    assert np.abs(one["prefill"]).max() > 1.0, "degenerate synthetic model: logits all tiny"
    for t in THREADS:
        run = runs[t]
        assert run["threads"] == t, f"{name}: asked for {t} instances, got {run['threads']}"
        what = f"{name} threads={t}"
        assert_bits_equal(one["prefill"], run["prefill"], f"{what} prefill")
        assert_bits_equal(one["decode"], run["decode"], f"{what} decode")
        assert_bits_equal(one["all"], run["all"], f"{what} all_logits")
        assert run["greedy"][0] == one["greedy"][0], f"{what}: greedy tokens differ"
        assert_bits_equal(one["greedy"][1], run["greedy"][1], f"{what} greedy logits")
        assert run["draws"] == one["draws"], f"{what}: guest-side samples differ"
        # every instance computed its own rows at every decode step: resident, it read nothing
        # after the prefill (the main guest: a token embedding row); streamed, each read at least
        # its rows of the output matrix, and the shards' reads are what the main guest no longer reads
        for step in run["fetched"]:
            for k, (r0, r1) in enumerate(run["ranges"]):
                if name in STREAMED:
                    assert step[k] >= (r1 - r0) * row_bytes, f"{what}: instance {k} read {step[k]} bytes"
                elif k == 0:
                    assert step[0] < row_bytes * 4, what
                else:
                    assert step[k] == 0, f"{what}: shard {k} read {step[k]} bytes"
    if name in STREAMED:
        assert min(step[0] for step in one["fetched"]) >= config.vocab_size * row_bytes
        assert one["stats"]["cache_bytes"] < config.vocab_size * row_bytes


@pytest.mark.parametrize("name", ["gemma3-q4_k", "llama-big-f16"])
def test_shards_called_per_group_agree(model_path, monkeypatch, name):
    """Without the mailbox (REALM_PEER_MAILBOX=0, or a host that is not x86-64) the shards are
    called once per matrix group; the results are the same bits."""
    path = model_path(name)
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        runs = {}
        for mailbox in ("1", "0"):
            monkeypatch.setenv("REALM_PEER_MAILBOX", mailbox)
            for t in (1, 3):
                with WasmEngine(f, config, wasm=GUEST, n_ctx=64, memory_budget=budget_for(name, t, config),
                                store=ModelStore(), threads=t) as eng:
                    assert (eng._peers is not None and eng._peers.links is not None) == (t > 1 and mailbox == "1")
                    last = eng.eval(PROMPT)
                    runs[mailbox, t] = (last, eng.eval([int(np.argmax(last))]), greedy(eng, [3, 4], 3))
    ref = runs["1", 1]
    for key, (last, step, (tokens, logits)) in runs.items():
        assert_bits_equal(ref[0], last, f"{name} {key} prefill")
        assert_bits_equal(ref[1], step, f"{name} {key} decode")
        assert tokens == ref[2][0], f"{name} {key} greedy"
        assert_bits_equal(ref[2][1], logits, f"{name} {key} greedy logits")


def test_shards_poll_only_when_every_instance_has_a_core(model_path, monkeypatch):
    """A shard polls its mailbox before blocking only when the engine has no more instances than
    the process has cores; either way the bits are the same."""
    import realm.engines.wasm as wasm_engine

    if not wasm_engine._mailbox_ok():
        pytest.skip("no mailbox shards on this machine")
    path = model_path("llama-q5_0")
    results = {}
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        for cores in (1, 2, 8):
            monkeypatch.setattr(wasm_engine, "_cores", lambda cores=cores: cores)
            with WasmEngine(f, config, wasm=GUEST, n_ctx=64, memory_budget=RESIDENT_BUDGET, store=ModelStore(),
                            threads=2) as eng:
                results[cores] = greedy(eng, PROMPT, N_GREEDY)
                polls = eng._peers.links[0].mb[wasm_engine.MB_POLLS]
                assert polls == (0 if cores < 2 else wasm_engine.MAILBOX_POLLS), cores
    for cores, (tokens, logits) in results.items():
        assert tokens == results[8][0]
        assert_bits_equal(results[8][1], logits, f"{cores} cores")


def test_shards_with_wasmtimes_public_call_path(model_path, monkeypatch):
    """REALM_WASM_SAFE_HOSTCALLS=1 (no raw host calls, no unchecked calls into the guest): the
    shards still serve their mailboxes through wasmtime-py's public API, with the same bits."""
    path = model_path("gemma3-q4_k")
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        with WasmEngine(f, config, wasm=GUEST, n_ctx=64, memory_budget=RESIDENT_BUDGET, store=ModelStore(),
                        threads=1) as ref:
            expect = greedy(ref, PROMPT, N_GREEDY)
        monkeypatch.setenv("REALM_WASM_SAFE_HOSTCALLS", "1")
        with WasmEngine(f, config, wasm=GUEST, n_ctx=64, memory_budget=RESIDENT_BUDGET, store=ModelStore(),
                        threads=3) as eng:
            assert not eng.guest.raw_hostcalls and eng.threads == 3
            tokens, logits = greedy(eng, PROMPT, N_GREEDY)
    assert tokens == expect[0]
    assert_bits_equal(expect[1], logits, "safe host calls, threads=3")


def test_layer_rows_are_split_between_instances(model_path):
    """With a budget that holds everything, each instance caches its part of every layer matrix
    (and the main guest the whole output matrix, for embedding lookups): the layers' work is split."""
    path = model_path("gemma3-q8_0")
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        layers, row_bytes = layer_bytes(f), output_row_bytes(f, config)
        out_bytes = row_bytes * config.vocab_size
        with WasmEngine(f, config, wasm=GUEST, n_ctx=64, memory_budget=RESIDENT_BUDGET, store=ModelStore(),
                        threads=3) as eng:
            eng.eval(PROMPT)
            eng.eval([5])
            cached = [guest_stats(g)["cache_bytes"] for g in eng.guests]
            ranges = eng._ranges
    slack = 3 * 4 * 7 * config.n_layers * max(config.dim, config.hidden_dim)  # rounding of parts to 4 rows
    assert abs(cached[0] - (out_bytes + layers // 3)) <= slack, cached
    for k in (1, 2):
        r0, r1 = ranges[k]
        assert abs(cached[k] - ((r1 - r0) * row_bytes + layers // 3)) <= slack, (k, cached)
    assert abs(sum(cached) - (2 * out_bytes + layers)) <= slack


def test_resident_and_streamed_rows_agree(model_path):
    """One total budget: with threads=1 the main guest caches the big output matrix, with shards it
    keeps MIN_MAIN_BUDGET and streams its rows; a 70-token prompt spans two host chunks of 64."""
    path = model_path("llama-big-f16")
    prompt = [int(t) for t in np.random.default_rng(5).integers(3, 4000, 70)]
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        output_bytes = int(f.tensors["output.weight"].n_bytes)
        total = MIN_MAIN_BUDGET + 2 * shard_budget(config, 3) + (8 << 20)
        runs = {}
        for t in THREADS:
            with WasmEngine(f, config, wasm=GUEST, n_ctx=128, memory_budget=total, store=ModelStore(),
                            threads=t) as eng:
                last = eng.eval(prompt)  # (vocab,)
                step = eng.eval([int(np.argmax(last))])  # (vocab,)
                runs[t] = (eng.threads, last, step, eng.guest_stats()["cache_bytes"], eng.memory_size)
    assert runs[1][3] >= output_bytes  # threads=1: the output matrix is cached ...
    for t in THREADS:
        n, last, step, cache_bytes, memory_size = runs[t]
        assert n == t and memory_size <= total
        if t > 1:
            assert cache_bytes < output_bytes  # ... with shards it is streamed
        assert_bits_equal(runs[1][1], last, f"threads={t} prefill of {len(prompt)}")
        assert_bits_equal(runs[1][2], step, f"threads={t} decode")


@pytest.mark.parametrize("name", sorted(STREAMED))
def test_default_threads_for_a_big_output_matrix(model_path, name):
    path = model_path(name)
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        with WasmEngine(f, config, wasm=GUEST, n_ctx=32, store=ModelStore()) as eng:  # 64 MiB
            assert eng.threads == default_threads() == max(1, min(len(os.sched_getaffinity(0)), 4))
        with WasmEngine(f, config, wasm=GUEST, n_ctx=32, store=ModelStore(), memory_budget=MIN_MAIN_BUDGET) as eng:
            assert eng.threads == 1  # no room for a shard


def test_row_ranges():
    for n in [0, 1, 3, 4, 5, 7, 8, 11, 12, 13, 299, 300, 301, 4099, 262144]:
        for k in range(1, 9):
            ranges = _row_ranges(n, k)
            assert len(ranges) == k, (n, k)
            assert ranges[0][0] == 0 and ranges[-1][1] == n, (n, k, ranges)
            for (a0, a1), (b0, b1) in zip(ranges, ranges[1:]):
                assert a1 == b0, (n, k, ranges)  # contiguous, no gap, no overlap
            for r0, r1 in ranges:
                assert r0 <= r1, (n, k, ranges)
                assert r0 % 4 == 0, (n, k, ranges)  # every cut on an aligned group of four rows
            sizes = [r1 - r0 for r0, r1 in ranges]
            assert sum(sizes) == n
            if n >= 4 * k:
                assert max(sizes) - min(sizes) <= 8, (n, k, sizes)  # near-equal shares
    assert _row_ranges(5, 3) == [(0, 0), (0, 0), (0, 5)]
    assert _row_ranges(300, 3) == [(0, 100), (100, 200), (200, 300)]
    assert _row_ranges(299, 2) == [(0, 148), (148, 299)]


# -- budget accounting -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(model_path):
    """(path, config) of a small llama model."""
    path = model_path("llama-q4_0")
    with GGUFFile(path) as f:
        return path, ModelConfig.from_gguf(f)


def test_budget_is_the_engines_total(tiny):
    path, config = tiny
    sb = shard_budget(config, 3)
    assert sb == 5 << 20  # 4 MiB + 4 * vocab + 64 tokens of small buffers, rounded up to whole MiB
    store = ModelStore()
    with GGUFFile(path) as f:
        with WasmEngine(f, config, wasm=GUEST, n_ctx=64, memory_budget=RESIDENT_BUDGET, store=store, threads=3) as eng:
            assert eng.threads == 3 and len(eng.guests) == 3 and len(eng._shards) == 2
            # a budget that holds every weight: each shard also gets room to keep its rows resident
            row_bytes = output_row_bytes(f, config)
            for g, (r0, r1) in zip(eng._shards, eng._ranges[1:]):
                assert g.memory_budget >= sb + (r1 - r0) * row_bytes + layer_bytes(f) // 3 - (1 << 20)
            assert eng.guest.memory_budget == RESIDENT_BUDGET - sum(g.memory_budget for g in eng._shards)
            assert sum(g.memory_budget for g in eng.guests) == RESIDENT_BUDGET
            eng.eval(PROMPT)
            assert eng.memory_size == sum(g.memory_size for g in eng.guests)
            assert eng.memory_size <= RESIDENT_BUDGET
            for g in eng.guests:
                assert g.memory_size <= g.memory_budget
            s = eng.stats()
            assert s["memory_size"] == eng.memory_size
            assert eng.guest.memory_size < s["peak_memory"] <= RESIDENT_BUDGET


def test_shards_stream_when_the_budget_is_tight(tiny):
    """Without room for every weight, shards get `shard_budget` each and stream their rows."""
    path, config = tiny
    sb = shard_budget(config, 3)
    budget = MIN_MAIN_BUDGET + 2 * sb
    store = ModelStore()
    with GGUFFile(path) as f:
        with WasmEngine(f, config, wasm=GUEST, n_ctx=64, memory_budget=budget, store=store, threads=3) as eng:
            assert [g.memory_budget for g in eng._shards] == [sb, sb]
            assert eng.guest.memory_budget == MIN_MAIN_BUDGET


@pytest.mark.parametrize("budget, asked, expect", [
    (MIN_MAIN_BUDGET + 2 * (5 << 20), 3, 3),
    (MIN_MAIN_BUDGET + 2 * (5 << 20) - 1, 3, 2),
    (MIN_MAIN_BUDGET + (5 << 20), 3, 2),
    (MIN_MAIN_BUDGET + (5 << 20) - 1, 3, 1),
    (8 << 20, 3, 1),
    (4 << 20, 2, 1),
])
def test_threads_reduced_when_the_budget_is_too_small(tiny, budget, asked, expect):
    path, config = tiny
    assert shard_budget(config, 2) == shard_budget(config, 3) == 5 << 20
    store = ModelStore()
    with GGUFFile(path) as f:
        ref = WasmEngine(f, config, wasm=GUEST, n_ctx=32, memory_budget=budget, store=store, threads=1)
        eng = WasmEngine(f, config, wasm=GUEST, n_ctx=32, memory_budget=budget, store=store, threads=asked)
        try:
            assert eng.threads == expect == len(eng.guests)
            assert eng.guest.memory_budget >= min(budget, MIN_MAIN_BUDGET)
            before = eng.stats()["bytes_fetched"]
            assert_bits_equal(ref.eval(PROMPT), eng.eval(PROMPT), f"budget {budget}")
            assert_bits_equal(ref.eval([9]), eng.eval([9]), f"budget {budget} decode")
            assert eng.stats()["bytes_fetched"] > before
            assert eng.memory_size <= budget
            assert eng.stats()["peak_memory"] <= budget
        finally:
            ref.close()
            eng.close()
    assert store.stats()["n_copies"] == 0


def test_read_quota_keeps_one_instance(tiny):
    path, config = tiny
    store = ModelStore()
    with GGUFFile(path) as f:
        with WasmEngine(f, config, wasm=GUEST, n_ctx=32, store=store, threads=3, max_read_bytes=1 << 40) as eng:
            assert eng.threads == 1 and eng.guests == [eng.guest] and eng.stats()["threads"] == 1
            with WasmEngine(f, config, wasm=GUEST, n_ctx=32, store=store, threads=1) as ref:
                assert_bits_equal(ref.eval(PROMPT), eng.eval(PROMPT), "quota engine")
            (mid,) = store.ids()
            assert set(store.holders(mid)) == {eng.guest.holder}


def test_default_threads_for_a_small_output_matrix(tiny):
    path, config = tiny
    with GGUFFile(path) as f:
        with WasmEngine(f, config, wasm=GUEST, n_ctx=32, store=ModelStore()) as eng:
            assert eng.threads == 1  # the output matrix is far below 8 MiB


@pytest.mark.parametrize("threads", [0, -1, "2", 2.0, 1.5])
def test_bad_threads_is_a_guest_error(tiny, threads):
    path, config = tiny
    store = ModelStore()
    with GGUFFile(path) as f:
        with pytest.raises(GuestError, match="threads"):
            WasmEngine(f, config, wasm=GUEST, n_ctx=32, store=store, threads=threads)
    assert store.stats()["n_copies"] == 0


def test_a_failed_start_releases_every_reference(tiny):
    path, config = tiny
    store = ModelStore()
    with GGUFFile(path) as f:
        budget = MIN_MAIN_BUDGET + 2 * shard_budget(config, 3)
        with pytest.raises(GuestError, match="memory-budget"):  # the KV cache does not fit the main guest
            WasmEngine(f, config, wasm=GUEST, n_ctx=1 << 17, memory_budget=budget, store=store, threads=3)
    assert store.stats()["n_copies"] == 0
    assert store.ids() == []


def test_sharded_engines_in_parallel_threads(tiny):
    """Three engines of three instances each, run at once: the same greedy run as one instance."""
    path, config = tiny
    store = ModelStore()
    with GGUFFile(path) as f:
        with WasmEngine(f, config, wasm=GUEST, n_ctx=32, store=store, threads=1) as ref:
            expect = greedy(ref, PROMPT, N_GREEDY)
        engines = [WasmEngine(f, config, wasm=GUEST, n_ctx=32, store=store, threads=3) for _ in range(3)]
        try:
            with ThreadPoolExecutor(max_workers=len(engines)) as pool:
                results = list(pool.map(lambda e: greedy(e, PROMPT, N_GREEDY), engines))
            assert len(store.holders(engines[0].model_id)) == 9
        finally:
            for e in engines:
                e.close()
    for k, (tokens, logits) in enumerate(results):
        assert tokens == expect[0], f"engine {k}"
        assert_bits_equal(expect[1], logits, f"engine {k} greedy logits")
    assert store.stats()["n_copies"] == 0


# -- store holders and stats ---------------------------------------------------------------------


def test_every_instance_holds_the_model_until_close(tiny):
    path, config = tiny
    store = ModelStore()
    with GGUFFile(path) as f:
        a = WasmEngine(f, config, wasm=GUEST, n_ctx=32, store=store, threads=3)
        b = WasmEngine(f, config, wasm=GUEST, n_ctx=32, store=store, threads=2)
        (mid,) = store.ids()
        assert a.model_id == b.model_id == mid
        holders = store.holders(mid)
        assert set(holders) == {g.holder for e in (a, b) for g in e.guests}
        assert len(holders) == a.threads + b.threads == 5
        a.eval(PROMPT)
        a.close()
        assert all(g.closed for g in a.guests)
        assert set(store.holders(mid)) == {g.holder for g in b.guests}
        assert b.eval(PROMPT).shape == (config.vocab_size,)
        b.close()
        b.close()  # twice is harmless
    assert store.holders(mid) == {}
    assert store.stats()["n_copies"] == 0


@pytest.mark.parametrize("mailbox", ["1", "0"])
def test_a_shard_stopped_by_its_deadline_is_a_clear_error(model_path, monkeypatch, mailbox):
    """A shard that overruns its deadline traps alone: the engine raises GuestError naming the
    deadline, refuses further use, and close() still releases every instance's reference."""
    monkeypatch.setenv("REALM_PEER_MAILBOX", mailbox)
    path = model_path("llama-big-f16")
    store = ModelStore()
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        eng = WasmEngine(f, config, wasm=GUEST, n_ctx=64, memory_budget=MIN_MAIN_BUDGET + shard_budget(config, 2),
                         store=store, threads=2)
        assert eng.threads == 2
        eng.eval(PROMPT)
        shard = eng._shards[0]
        shard.timeout = 0.001
        shard._set_deadline = lambda: shard._store.set_epoch_deadline(0)  # already due: traps at once
        with pytest.raises(GuestError, match="deadline"):
            eng.eval([1])
        assert eng._shards[0].trapped is not None and eng.guest.trapped is None
        n_past = eng.n_past
        with pytest.raises(GuestError, match="shard of this engine failed earlier"):
            eng.eval([1])
        assert eng.n_past == n_past  # refused before the main guest evaluated anything
        eng.close()
    assert store.stats()["n_copies"] == 0


def test_guest_stats_sum_over_instances(tiny):
    path, config = tiny
    store = ModelStore()
    with GGUFFile(path) as f:
        with WasmEngine(f, config, wasm=GUEST, n_ctx=32, store=store, threads=3) as eng:
            eng.eval(PROMPT)
            eng.eval([7])
            parts = [guest_stats(g) for g in eng.guests]
            total = eng.guest_stats()
            for key in ("bytes_fetched", "host_calls", "cache_hits", "cache_misses", "peak_memory", "cache_bytes"):
                assert total[key] == sum(p[key] for p in parts), key
            assert total["n_past"] == parts[0]["n_past"] == len(PROMPT) + 1
            for p in parts[1:]:  # each shard read its rows: every time, or once and kept them
                assert p["bytes_fetched"] > 0 and p["cache_misses"] >= 1
                assert p["cache_misses"] >= 2 or p["cache_bytes"] > 0
            s = eng.stats()
            assert s["host_calls"] == sum(g.tenant.host_calls for g in eng.guests)
            assert s["bytes_fetched"] == total["bytes_fetched"] == sum(holder_bytes(store, eng))


# -- the guest exports -----------------------------------------------------------------------------


class RawGuest:
    """A bare `Guest` holding the tiny model, with a token buffer."""

    def __init__(self, store: ModelStore, mid: int, budget: int = 16 << 20):
        self.g = Guest(GUEST, model_store=store, memory_budget=budget)
        self.g.acquire(mid)
        self.mid = mid
        self.tok = self.g.alloc(4 * len(PROMPT))
        self.g.write(self.tok, np.asarray(PROMPT, np.int32))
        self.params = self.g.alloc(abi.SAMPLE_PARAMS.size)
        self.g.write(self.params, abi.pack_sample_params(SamplingParams(), 0))

    def call(self, name: str, *args) -> int:
        return self.g.call(name, *args)

    def eval(self, n: int, mode: int) -> int:
        return self.call("realm_eval", self.tok, n, mode)

    def logits(self, vocab: int) -> np.ndarray:
        return self.g.read_array(self.call("realm_logits_ptr") & 0xFFFFFFFF, np.float32, vocab)


@pytest.fixture
def raw(tiny):
    """(make, config): make() -> a fresh RawGuest holding the tiny model."""
    path, config = tiny
    store = ModelStore()
    mid = store.add(path)
    made = []

    def make(**kw) -> RawGuest:
        made.append(RawGuest(store, mid, **kw))
        return made[-1]

    yield make, config
    for r in made:
        assert r.g.trapped is None
        r.g.close()


def test_exports_before_init(raw):
    make, config = raw
    r = make()
    assert r.call("realm_logits_rows", 0, 4) == Err.ERR_NOT_INIT
    assert r.call("realm_logits_rows", 0, 0) == Err.ERR_NOT_INIT
    assert r.eval(1, 2) == Err.ERR_NOT_INIT


def test_init_shard_bad_arguments(raw):
    make, config = raw
    r = make()
    budget = shard_budget(config, 2)
    assert r.call("realm_init_shard", 0, budget, 1, 2) == Err.ERR_BAD_ARG
    assert r.call("realm_init_shard", -r.mid, budget, 1, 2) == Err.ERR_BAD_ARG
    assert r.call("realm_init_shard", r.mid, 0, 1, 2) == Err.ERR_BAD_ARG
    assert r.call("realm_init_shard", r.mid + 1, budget, 1, 2) == Err.ERR_NO_MODEL  # not held by this guest
    assert r.call("realm_logits_rows", 0, 4) == Err.ERR_NOT_INIT  # none of these initialised it
    # part 0 is the main guest's; a part must be below the count; nothing negative
    for part, n_parts in ((0, 2), (2, 2), (3, 2), (-1, 2), (1, -2), (1, 0), (1, 1), (-0x80000000, 2)):
        assert r.call("realm_init_shard", r.mid, budget, part, n_parts) == Err.ERR_BAD_ARG, (part, n_parts)
    assert r.call("realm_logits_rows", 0, 4) == Err.ERR_NOT_INIT
    assert r.call("realm_init_shard", r.mid, budget, 1, 2) == 0


def test_init_main_bad_arguments(raw):
    make, config = raw
    r = make()
    for n_parts in (0, -1, -0x80000000):
        assert r.call("realm_init_main", r.mid, 32, 16 << 20, n_parts) == Err.ERR_BAD_ARG, n_parts
    assert r.call("realm_init_main", r.mid, 0, 16 << 20, 2) == Err.ERR_BAD_ARG
    assert r.eval(1, 0) == Err.ERR_NOT_INIT
    # a main guest of 2 parts without peers behind it: realm_eval fails cleanly, n_past stays 0
    assert r.call("realm_init_main", r.mid, 32, 16 << 20, 2) == 0
    assert r.eval(len(PROMPT), 0) == Err.ERR_UNSUPPORTED
    assert r.eval(len(PROMPT), 0) == Err.ERR_UNSUPPORTED
    assert r.call("realm_sample", r.params) == Err.ERR_NOT_INIT
    # a main guest of 1 part is realm_init
    assert r.call("realm_init_main", r.mid, 32, 16 << 20, 1) == 0
    assert r.eval(len(PROMPT), 0) == 0


def test_peer_exports_refuse_bad_arguments(raw):
    make, config = raw
    main = make()
    assert main.call("realm_peer_run", 0, 0, 1) == Err.ERR_NOT_INIT
    assert main.call("realm_peer_serve") == Err.ERR_NOT_INIT
    assert main.call("realm_peer_in_ptr") == 0 and main.call("realm_peer_out_ptr") == 0
    assert main.call("realm_init", main.mid, 32, 16 << 20) == 0
    assert main.call("realm_peer_run", 0, 0, 1) == Err.ERR_BAD_ARG  # the main guest is no peer
    assert main.call("realm_peer_serve") == Err.ERR_BAD_ARG
    assert main.call("realm_peer_in_ptr") == 0
    shard = make(budget=shard_budget(config, 2))
    assert shard.call("realm_init_shard", shard.mid, shard_budget(config, 2), 1, 2) == 0
    assert shard.call("realm_peer_in_ptr") != 0 and shard.call("realm_peer_out_ptr") != 0
    n_layers = config.n_layers
    bad = [(4, 0, 1), (-1, 0, 1), (1 << 30, 0, 1), (0, n_layers, 1), (0, -1, 1), (0, 1 << 30, 1),
           (0, 0, 0), (0, 0, -1), (0, 0, 65), (0, 0, 1 << 30)]
    for args in bad:
        assert shard.call("realm_peer_run", *args) == Err.ERR_BAD_ARG, args
        assert shard.g.trapped is None
    for group in range(4):
        assert shard.call("realm_peer_run", group, n_layers - 1, 64) == 0
    # a peer serving a mailbox no host feeds gives up (after ~1 ms of polls) with the host's refusal
    assert shard.call("realm_peer_serve") == Err.ERR_UNSUPPORTED
    assert shard.g.trapped is None


def test_peer_run_rows_equal_numpy(raw, tiny):
    """`realm_peer_run` writes the shard's row part of each matrix of a group as one (nt, part
    rows) block after another; checked against gguf-py's dequantized weights times the input."""
    make, config = raw
    path, _ = tiny
    reader = gguf.GGUFReader(str(path))
    weights = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64) for t in reader.tensors}
    shard = make(budget=shard_budget(config, 3))
    assert shard.call("realm_init_shard", shard.mid, shard_budget(config, 3), 2, 3) == 0  # the last part
    out_ptr = shard.call("realm_peer_out_ptr") & 0xFFFFFFFF
    in_ptr = shard.call("realm_peer_in_ptr") & 0xFFFFFFFF
    groups = {0: ("attn_q", "attn_k", "attn_v"), 1: ("attn_output",), 2: ("ffn_gate", "ffn_up"), 3: ("ffn_down",)}
    rng = np.random.default_rng(3)
    layer, nt = config.n_layers - 1, 5
    for group, names in groups.items():
        mats = [weights[f"blk.{layer}.{n}.weight"] for n in names]  # (rows, cols) each
        x = rng.standard_normal((nt, mats[0].shape[1])).astype(np.float32)  # (nt, cols)
        shard.g.write(in_ptr, x)
        assert shard.call("realm_peer_run", group, layer, nt) == 0
        off = out_ptr
        for name, w in zip(names, mats):
            r0, r1 = _row_ranges(w.shape[0], 3)[2]
            got = shard.g.read_array(off, np.float32, nt * (r1 - r0)).reshape(nt, r1 - r0)
            expect = x.astype(np.float64) @ w[r0:r1].T  # (nt, part rows)
            scale = np.abs(x).max() * np.abs(w[r0:r1]).sum(axis=1).max()
            assert np.abs(got - expect).max() <= 1e-3 * scale, f"group {group} {name}"
            off += 4 * nt * (r1 - r0)


@pytest.mark.parametrize("mode", [3, -1, 4, 1 << 30])
def test_eval_mode_out_of_range_is_rejected(raw, mode):
    make, config = raw
    r = make()
    assert r.call("realm_init", r.mid, 32, 16 << 20) == 0
    assert r.eval(len(PROMPT), mode) == Err.ERR_BAD_ARG
    stats = r.g.alloc(abi.GUEST_STATS.size)
    assert r.call("realm_stats", stats) == 0
    assert abi.unpack_guest_stats(r.g.read(stats, abi.GUEST_STATS.size))["n_past"] == 0  # nothing evaluated
    assert r.eval(len(PROMPT), 0) == 0  # still usable
    assert r.call("realm_sample", r.params) >= 0


def test_hidden_mode_then_rows_equals_full_logits(raw):
    make, config = raw
    vocab = config.vocab_size
    r = make()
    assert r.call("realm_init", r.mid, 32, 16 << 20) == 0
    assert r.eval(len(PROMPT), 0) == 0
    expect = r.logits(vocab)
    greedy_token = r.call("realm_sample", r.params)
    assert greedy_token == int(np.argmax(expect))
    hidden_ptr = r.call("realm_hidden_ptr") & 0xFFFFFFFF
    assert hidden_ptr > 0
    hidden = r.g.read_array(hidden_ptr, np.float32, config.dim)  # (dim,)

    assert r.call("realm_reset") == 0
    assert r.eval(len(PROMPT), 2) == 0
    assert_bits_equal(hidden, r.g.read_array(hidden_ptr, np.float32, config.dim), "hidden state, mode 2")
    assert r.call("realm_sample", r.params) == Err.ERR_NOT_INIT  # mode 2 computes no logits
    # rows in aligned pieces, in any order, give the full logits
    for r0, r1 in [(200, vocab), (0, 100), (100, 200)]:
        assert r.call("realm_logits_rows", r0, r1) == 0
    assert_bits_equal(expect, r.logits(vocab), "mode 2 + realm_logits_rows")
    assert r.call("realm_sample", r.params) == greedy_token


def test_bad_row_ranges_are_rejected_without_trapping(raw):
    make, config = raw
    vocab = config.vocab_size
    main = make()
    assert main.call("realm_init", main.mid, 32, 16 << 20) == 0
    shard = make(budget=shard_budget(config, 2))
    assert shard.call("realm_init_shard", shard.mid, shard_budget(config, 2), 1, 2) == 0
    assert main.eval(len(PROMPT), 0) == 0
    expect = main.logits(vocab)
    bad = [(8, 4), (vocab, 0), (-1, 4), (-4, -1), (0, -1), (0, vocab + 1), (vocab + 1, vocab + 1),
           (0, 1 << 30), (0, 0x7FFFFFFF), (-0x80000000, 4)]
    for r in (main, shard):
        for r0, r1 in bad:
            assert r.call("realm_logits_rows", r0, r1) == Err.ERR_BAD_ARG, (r0, r1)
            assert r.g.trapped is None
        assert r.call("realm_logits_rows", 4, 4) == 0  # an empty range is fine (a share of a tiny vocab)
        assert r.call("realm_logits_rows", vocab, vocab) == 0
    assert_bits_equal(expect, main.logits(vocab), "main logits after rejected ranges")
    # the shard still computes: same hidden state in, same rows out
    hidden = main.g.read(main.call("realm_hidden_ptr") & 0xFFFFFFFF, 4 * config.dim)
    shard.g.write(shard.call("realm_hidden_ptr") & 0xFFFFFFFF, hidden)
    assert shard.call("realm_logits_rows", 0, vocab) == 0
    assert_bits_equal(expect, shard.logits(vocab), "shard rows [0, vocab)")
    assert main.call("realm_logits_rows", 0, vocab) == 0
    assert_bits_equal(expect, main.logits(vocab), "main rows [0, vocab)")


def test_a_shard_refuses_eval_and_sample(raw):
    make, config = raw
    vocab = config.vocab_size
    r = make(budget=shard_budget(config, 2))
    assert r.call("realm_init_shard", r.mid, shard_budget(config, 2), 1, 2) == 0
    assert r.call("realm_sample", r.params) == Err.ERR_NOT_INIT
    for mode in (0, 1, 2):
        assert r.eval(1, mode) == Err.ERR_CONTEXT_FULL
    assert r.eval(1, 3) == Err.ERR_BAD_ARG
    hidden = np.linspace(-1, 1, config.dim, dtype=np.float32)  # (dim,)
    r.g.write(r.call("realm_hidden_ptr") & 0xFFFFFFFF, hidden)
    assert r.call("realm_logits_rows", 0, vocab) == 0
    assert np.abs(r.logits(vocab)).max() > 0
    assert r.call("realm_sample", r.params) == Err.ERR_NOT_INIT  # logits, but no sampler buffers
    assert r.call("realm_reset") == 0
    assert r.eval(1, 0) == Err.ERR_CONTEXT_FULL
    assert r.g.memory_size <= shard_budget(config, 2)
