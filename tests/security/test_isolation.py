"""Tenant isolation: what one guest can learn about, or do to, the models and results of another.

- ids are content-derived 63-bit numbers, not guessable; a model a tenant does not hold fails
  exactly like a missing one (same code, same code path: the store is not even consulted);
- an explicit id given to `realm_store_model` is a private alias of that tenant (no squatting, no
  ERR_ID_CONFLICT oracle), and a guest's image never revives a model the consumer removed;
- removing a model one tenant uses does not disturb another; a trap in one guest (deadline, bad
  memory access, stack overflow, memory bomb) leaves the others' logits bit-identical to solo runs.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")

from synth import kquant_dims, make_model  # noqa: E402

from realm.config import ModelConfig  # noqa: E402
from realm.errors import GuestError, StoreError  # noqa: E402
from realm.gguf import GGUFFile  # noqa: E402
from realm.host import abi  # noqa: E402
from realm.host.abi import Err  # noqa: E402
from realm.host.runtime import Guest, default_guest_path, load_module  # noqa: E402
from realm.host.store import MAX_ID, ModelStore, content_id  # noqa: E402
from realm.quants import GGMLType  # noqa: E402
from realm.generate import greedy

pytestmark = pytest.mark.usefixtures("wasm_runtime")  # under every installed runtime (conftest.py)

PROXY = (Path(__file__).resolve().parent / "wat" / "proxy.wat").read_text()
NAME_AT, OUT_AT, BIG_AT = 0x100, 0x1000, 0x10000
PROMPTS = [[1, 5, 9, 100, 200, 7], [1, 42, 43, 44], [1, 250, 3, 3, 3, 3, 3, 8]]
N_STEPS = 6


@functools.cache
def guest_module():
    """The shipped guest, compiled once here: references and tenants run the same code even if the
    .wasm is rebuilt while the tests run."""
    return load_module(default_guest_path().read_bytes())

needs_guest = pytest.mark.skipif(not default_guest_path().exists(), reason="the guest is not built")

READ_THEN_TRAP = """(module
  (import "env" "realm_read_tensor" (func $read (param i64 i32 i64 i32 i32) (result i32)))
  (memory (export "memory") 16)
  (func (export "go") (param $id i64) (result i32)
    (drop (call $read (local.get $id) (i32.const 0) (i64.const 0) (i32.const 0x1000) (i32.const 256)))
    (i32.load (i32.const 0x7ffffff0))))"""
RECURSE = """(module (memory (export "memory") 1)
  (func $r (export "go") (param i64) (result i32) (i32.add (call $r (local.get 0)) (i32.const 1))))"""
BOMB = """(module (memory (export "memory") 1)
  (func (export "go") (param i64) (result i32)
    (block $d (loop $l (br_if $d (i32.eq (memory.grow (i32.const 16)) (i32.const -1))) (br $l)))
    (i32.store (i32.mul (memory.size) (i32.const 65536)) (i32.const 1)) (i32.const 0)))"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("isolation")
    return {
        "shared": make_model(d / "shared.gguf", arch="gemma3", qtype=GGMLType.Q4_K, seed=4, **kquant_dims()),
        "a": make_model(d / "a.gguf", arch="llama", qtype=GGMLType.Q8_0, seed=1),
        "b": make_model(d / "b.gguf", arch="llama", qtype=GGMLType.Q4_0, seed=2),
    }


class Proxy:
    """A guest re-exporting every host import (tests/security/wat/proxy.wat)."""

    def __init__(self, st: ModelStore, mid: int | None = None, **kw):
        self.g = Guest(PROXY, model_store=st, **kw)
        self.g.call("grow", 40)  # room for whole synthetic images
        if mid is not None:
            self.g.acquire(mid)

    def __getattr__(self, name):
        return lambda *args: self.g.call("call_realm_" + name, *args)

    def store_image(self, image: bytes, model_id: int = 0) -> int:
        self.g.write(BIG_AT, image)
        return self.store_model(BIG_AT, len(image), model_id)

    def config_bytes(self, mid: int) -> bytes | int:
        rc = self.get_config(mid, OUT_AT, 128)
        return self.g.read(OUT_AT, 128) if rc == 128 else rc

    def first_bytes(self, mid: int, name: str = "token_embd.weight", n: int = 64) -> bytes | int:
        self.g.write(NAME_AT, name.encode())
        h = self.tensor_info(mid, NAME_AT, len(name), OUT_AT)
        if h < 0:
            return h
        rc = self.read_tensor(mid, h, 0, BIG_AT, n)
        return self.g.read(BIG_AT, n) if rc == n else rc


def file_tensor_bytes(path: Path, name: str = "token_embd.weight", n: int = 64) -> bytes:
    with GGUFFile(path) as f:
        return f.tensor_bytes(name).tobytes()[:n]


# ---- ids ---------------------------------------------------------------------------------------------


def test_ids_are_content_derived_63_bit(models):
    st = ModelStore()
    ids = []
    for path in models.values():
        mid = st.add(path)
        assert mid == content_id(hashlib.sha256(path.read_bytes()).digest())
        assert 0 < mid <= MAX_ID
        ids.append(mid)
    assert len(set(ids)) == len(ids)
    assert all(mid > 1 << 40 for mid in ids)  # not small counters (probability 2^-23 each by chance)
    h = Proxy(st)
    assert h.store_image(models["a"].read_bytes()) == ids[1]  # a guest gets the same content id
    h.g.close()
    st.close()


class Tripwire:
    """Stands in for the store: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the store was consulted ({name}) for an id the tenant does not hold")


def test_missing_and_foreign_ids_fail_identically_without_touching_the_store(models):
    st = ModelStore()
    mine = st.add(models["shared"])
    foreign = st.add(models["a"])
    removed = st.add(models["b"])
    owner = Proxy(st, foreign)
    Proxy(st, removed).g.close()
    st.remove(removed)
    h = Proxy(st, mine)
    h.g.write(NAME_AT, b"token_embd.weight")
    h.g.write(BIG_AT, abi.pack_read_req(0, OUT_AT, 0, 4))
    real_store, h.g.tenant.store = h.g.tenant.store, Tripwire()
    outcomes = {}
    for label, mid in [("foreign", foreign), ("removed", removed), ("missing", foreign ^ 1), ("zero", 0),
                       ("max", MAX_ID), ("negative", -foreign)]:
        outcomes[label] = (
            h.tensor_info(mid, NAME_AT, 17, OUT_AT), h.read_tensor(mid, 0, 0, OUT_AT, 4),
            h.read_tensors(mid, BIG_AT, 1), h.get_tensor(mid, NAME_AT, 17, OUT_AT, 1 << 20),
            h.get_model_info(mid, OUT_AT, OUT_AT + 8), h.get_config(mid, OUT_AT, 128), h.remove_model(mid))
    h.g.tenant.store = real_store
    assert set(outcomes.values()) == {(Err.ERR_NO_MODEL,) * 7}, outcomes
    assert st.holders(foreign) == {owner.g.holder: 1}  # untouched
    assert h.first_bytes(mine) == file_tensor_bytes(models["shared"])  # the tenant's own model still works
    owner.g.close()
    h.g.close()
    st.close()


def test_explicit_ids_are_private_aliases(models):
    st = ModelStore()
    image_a, image_b = models["a"].read_bytes(), models["b"].read_bytes()
    b_id = content_id(hashlib.sha256(image_b).digest())
    squatter = Proxy(st)
    # squat the id the consumer will give model b, with model a's content
    assert squatter.store_image(image_a, b_id) == b_id
    a_id = content_id(hashlib.sha256(image_a).digest())
    assert st.ids() == [a_id]  # the store never learns the alias
    assert st.add(models["b"]) == b_id  # the consumer is not blocked ...
    victim = Proxy(st, b_id)  # ... and another tenant gets the real model b under its id
    assert victim.first_bytes(b_id) == file_tensor_bytes(models["b"])
    assert squatter.first_bytes(b_id) == file_tensor_bytes(models["a"])  # the squatter sees its own alias
    with pytest.raises(StoreError, match="other content"):
        squatter.g.acquire(b_id)  # it only confused itself
    assert squatter.g.holder not in st.holders(b_id)
    # the same alias in two tenants names two different models, and neither conflicts
    t1, t2 = Proxy(st), Proxy(st)
    assert t1.store_image(image_a, 77) == 77 and t2.store_image(image_b, 77) == 77
    assert t1.first_bytes(77) == file_tensor_bytes(models["a"])
    assert t2.first_bytes(77) == file_tensor_bytes(models["b"])
    # ERR_ID_CONFLICT only inside a tenant's own table
    assert t1.store_image(image_b, 77) == Err.ERR_ID_CONFLICT
    assert t1.store_image(image_a, 77) == 77  # the same content again: one more reference
    assert t1.remove_model(77) == 0 and t1.remove_model(77) == 0 and t1.remove_model(77) == Err.ERR_NO_MODEL
    assert st.holders(a_id) == {squatter.g.holder: 1}
    for p in (squatter, victim, t1, t2):
        p.g.close()
    assert st.stats()["n_copies"] == 1 and st.ids() == [b_id]  # only the consumer's pinned model is left
    st.close()


def test_storing_known_content_reveals_nothing_and_revives_nothing(models):
    st = ModelStore()
    held_id = st.add(models["a"])
    user = Proxy(st, held_id)
    prober = Proxy(st)
    known, unknown = models["a"].read_bytes(), models["b"].read_bytes()
    r_known, r_unknown = prober.store_image(known), prober.store_image(unknown)
    assert r_known > 0 and r_unknown > 0  # both simply succeed with their content ids
    assert r_known == held_id
    assert st.stats()["models"][held_id]["pinned"]
    # a consumer-removed model stays removed when a guest stores its bytes again
    st.remove(held_id)
    late = Proxy(st)
    assert late.store_image(known) == held_id
    assert held_id not in st
    with pytest.raises(StoreError):
        Proxy(st, held_id)
    assert user.first_bytes(held_id) == file_tensor_bytes(models["a"])  # existing users keep reading
    for p in (user, prober, late):
        p.g.close()
    assert st.stats()["n_copies"] == 0
    st.close()


# ---- real guests ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def solo(models):
    from realm.engines.wasm import WasmEngine

    out = {}
    with GGUFFile(models["shared"]) as f:
        config = ModelConfig.from_gguf(f)
        for k, prompt in enumerate(PROMPTS):
            eng = WasmEngine(f, config, wasm=guest_module(), n_ctx=128, store=ModelStore())
            out[k] = greedy(eng, prompt, N_STEPS)
            eng.close()
    return out


@needs_guest
def test_removing_a_model_does_not_disturb_another_tenant(models, solo):
    from realm.engines.wasm import WasmEngine

    st = ModelStore()
    mid = st.add(models["shared"])
    with GGUFFile(models["shared"]) as f:
        config = ModelConfig.from_gguf(f)
        a = WasmEngine(f, config, wasm=guest_module(), n_ctx=128, store=st)
        b = WasmEngine(f, config, wasm=guest_module(), n_ctx=128, store=st)
        other = Proxy(st, mid)
        logits = b.eval(PROMPTS[0])
        got_tokens, got_logits = [], []
        for step in range(N_STEPS):
            got_logits.append(logits)
            got_tokens.append(int(logits.argmax()))
            if step == 1:
                st.remove(mid)  # the consumer removes the model mid-generation
            if step == 2:
                assert other.remove_model(mid) == 0  # another guest drops its reference
                assert other.remove_model(mid) == Err.ERR_NO_MODEL
            if step == 3:
                a.eval([1, 2])
                a.close()  # another engine goes away
            logits = b.eval([got_tokens[-1]])
        assert got_tokens == solo[0][0]
        np.testing.assert_array_equal(np.stack(got_logits), solo[0][1])
        assert mid not in st and st.stats()["n_copies"] == 1  # still mapped for b
        b.close()
        other.g.close()
    assert st.stats()["n_copies"] == 0


@needs_guest
def test_a_trap_in_one_guest_leaves_the_others_unchanged(models, solo):
    from realm.engines.wasm import WasmEngine

    st = ModelStore()
    mid = st.add(models["shared"])
    f = GGUFFile(models["shared"])
    config = ModelConfig.from_gguf(f)
    n_normal = 4
    normal = [WasmEngine(f, config, wasm=guest_module(), n_ctx=128, store=st) for _ in range(n_normal)]
    # the real guest, trapped by its deadline mid-eval
    victim = WasmEngine(f, config, wasm=guest_module(), n_ctx=256, store=st)
    results: list = [None] * n_normal
    hostile_errors: list[str] = []
    failures: list = []
    start = threading.Barrier(n_normal + 4)

    def run_normal(i: int) -> None:
        try:
            start.wait()
            results[i] = greedy(normal[i], PROMPTS[i % len(PROMPTS)], N_STEPS)
        except BaseException as e:
            failures.append(e)

    def run_victim() -> None:
        try:
            start.wait()
            victim.eval([1, 2, 3])
            victim.guest.timeout = 0.001
            for _ in range(3):
                victim.eval(list(range(5, 69)))
            failures.append(AssertionError("the victim was not stopped"))
        except GuestError as e:
            hostile_errors.append(str(e))
        except BaseException as e:
            failures.append(e)

    def run_wat(wat: str, rounds: int) -> None:
        try:
            start.wait()
            for _ in range(rounds):
                g = Guest(wat, model_store=st, memory_budget=8 << 20)
                g.acquire(mid)
                try:
                    g.call("go", mid)
                    failures.append(AssertionError("no trap"))
                except GuestError as e:
                    hostile_errors.append(str(e))
                finally:
                    g.close()
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=run_normal, args=(i,)) for i in range(n_normal)]
    threads += [threading.Thread(target=run_victim)]
    threads += [threading.Thread(target=run_wat, args=(w, 5)) for w in (READ_THEN_TRAP, RECURSE, BOMB)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not failures, failures
        assert len(hostile_errors) == 1 + 3 * 5
        assert any("deadline" in e for e in hostile_errors)
        assert any("stack overflow" in e for e in hostile_errors)
        assert sum("out of bounds" in e for e in hostile_errors) == 10
        for i, (tokens, logits) in enumerate(results):
            assert tokens == solo[i % len(PROMPTS)][0], f"guest {i}"
            np.testing.assert_array_equal(logits, solo[i % len(PROMPTS)][1], err_msg=f"guest {i}")
        assert st.stats()["n_copies"] == 1
        assert set(st.holders(mid)) == {g.holder for e in normal + [victim] for g in e.guests}
    finally:
        for e in normal + [victim]:
            e.close()
        f.close()
    assert st.holders(mid) == {}
    st.close()
