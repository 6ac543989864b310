"""ModelStore: ids, deduplication, conflicts, deferred removal, accounting, quotas, threads."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

pytest.importorskip("gguf")

from synth import make_model  # noqa: E402

from realm.errors import GGUFError, StoreError  # noqa: E402
from realm.gguf import GGUFFile  # noqa: E402
from realm.host import store as store_mod  # noqa: E402
from realm.host.store import (  # noqa: E402
    BadModelError, IdConflictError, ModelStore, NoModelError, QuotaError, content_id, default_store,
)
from realm.quants import GGMLType  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("store")
    a = make_model(d / "a.gguf", arch="llama", qtype=GGMLType.Q8_0, seed=1)
    b = make_model(d / "b.gguf", arch="llama", qtype=GGMLType.Q4_0, seed=2)
    return a, b


def sha_id(path) -> int:
    digest = hashlib.sha256(path.read_bytes()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def test_content_id_is_sha256_prefix_with_top_bit_clear(models):
    a, _ = models
    st = ModelStore()
    mid = st.add(a)
    assert mid == sha_id(a)
    assert 0 < mid < 1 << 63
    assert content_id(b"\xff" * 32) == (1 << 63) - 1


def test_same_content_is_one_copy_one_id(models):
    a, _ = models
    st = ModelStore()
    m1 = st.add(a)
    m2 = st.add(str(a))
    m3 = st.add(a.read_bytes())  # the same content as an image
    with GGUFFile(a) as gf:
        m4 = st.add(gf)  # an open GGUFFile: the store maps its own copy
    assert m1 == m2 == m3 == m4
    s = st.stats()
    assert s["n_copies"] == 1 and s["n_models"] == 1
    assert s["mapped_bytes"] == a.stat().st_size


def test_second_add_of_a_file_does_not_rehash(models, monkeypatch):
    a, _ = models
    expected = sha_id(a)
    st = ModelStore()
    st.add(a)
    monkeypatch.setattr(store_mod.hashlib, "sha256", lambda *x: pytest.fail("file hashed again"))
    assert ModelStore().add(a) == expected


def test_explicit_ids_and_conflicts(models):
    a, b = models
    st = ModelStore()
    assert st.add(a, 42) == 42
    assert st.add(a, 42) == 42
    with pytest.raises(IdConflictError):
        st.add(b, 42)
    # the same content under a second id is an alias of the one copy
    assert st.add(a, 43) == 43
    assert st.get(42) is st.get(43)
    assert st.stats()["n_copies"] == 1
    for bad in (0, -1, 1 << 63, True, 1.5):
        with pytest.raises(StoreError):
            st.add(b, bad)


def test_unknown_id_and_malformed_images(models):
    st = ModelStore(max_image_bytes=1 << 20)
    with pytest.raises(NoModelError):
        st.get(12345)
    with pytest.raises(NoModelError):
        st.acquire(12345, "g")
    with pytest.raises(BadModelError):
        st.add_image(b"GGUF\x03\x00\x00\x00garbage", holder="g")
    with pytest.raises(QuotaError):
        st.add_image(b"\0" * ((1 << 20) + 1), holder="g")
    with pytest.raises(GGUFError):
        st.add(b"not a gguf at all")
    assert st.stats()["n_copies"] == 0


def test_remove_is_deferred_until_the_last_holder(models):
    a, _ = models
    st = ModelStore()
    mid = st.add(a)
    entry = st.acquire(mid, "g1")
    st.acquire(mid, "g2")
    st.remove(mid)
    assert mid not in st
    with pytest.raises(NoModelError):
        st.acquire(mid, "g3")
    assert not entry.closed
    assert entry.gguf.buffer[:4].tobytes() == b"GGUF"  # holders still read it
    st.release(mid, "g1")
    assert not entry.closed
    st.release(mid, "g2")
    assert entry.closed
    assert st.stats()["n_copies"] == 0
    with pytest.raises(NoModelError):
        st.release(mid, "g2")


def test_unpinned_model_goes_with_its_last_holder(models):
    a, _ = models
    st = ModelStore()
    mid = st.add(a, holder="g", pin=False)
    assert st.holders(mid) == {"g": 1}
    st.release(mid, "g")
    assert mid not in st and st.stats()["n_copies"] == 0
    # a consumer add pins it
    mid = st.add(a, holder="g", pin=False)
    st.add(a)
    st.release(mid, "g")
    assert mid in st


def test_release_all_and_refcounts(models):
    a, b = models
    st = ModelStore()
    ma, mb = st.add(a), st.add(b)
    for _ in range(3):
        st.acquire(ma, "g")
    st.acquire(mb, "g")
    assert st.holders(ma) == {"g": 3}
    st.release_all("g")
    assert st.holders(ma) == {} and st.holders(mb) == {}


def test_accounting_and_quotas(models):
    a, b = models
    st = ModelStore()
    ma, mb = st.add(a), st.add(b)
    st.set_limits("g", max_read_bytes=1000, max_models=1)
    st.acquire(ma, "g")
    st.acquire(ma, "g")  # the same model again does not count twice
    with pytest.raises(QuotaError):
        st.acquire(mb, "g")
    st.charge(ma, "g", 600)
    st.charge(ma, "h", 50)
    with pytest.raises(QuotaError):
        st.charge(ma, "g", 401)
    st.charge(ma, "g", 400)
    s = st.stats()
    assert s["models"][ma]["bytes_served"] == 1050
    assert s["bytes_served"] == 1050
    assert st.holder_stats("g")["bytes_read"] == 1000
    assert st.holder_stats("g")["models"] == [ma]


def test_quota_refusal_of_a_new_image_leaves_nothing(models):
    a, b = models
    st = ModelStore()
    st.set_limits("g", max_models=1)
    st.add(a, holder="g", pin=False)
    with pytest.raises(QuotaError):
        st.add_image(b.read_bytes(), holder="g")
    assert st.stats()["n_copies"] == 1


def test_default_store_is_a_singleton():
    assert default_store() is default_store()


def test_threads_share_one_copy(models):
    a, b = models
    st = ModelStore()
    errors = []

    def work(k: int) -> None:
        try:
            for i in range(50):
                path = a if (i + k) % 2 else b
                mid = st.add(path, holder=("t", k), pin=False)
                entry = st.acquire(mid, ("t", k))
                assert entry.gguf.buffer[:4].tobytes() == b"GGUF"
                st.charge(mid, ("t", k), 10)
                st.release(mid, ("t", k))
                st.release(mid, ("t", k))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s = st.stats()
    assert s["n_copies"] == 0  # unpinned, every holder let go
    st.add(a)
    assert st.stats()["n_copies"] == 1


def test_close_unmaps(models):
    a, _ = models
    st = ModelStore()
    mid = st.add(a)
    gf = st.gguf(mid)
    assert np.asarray(gf.buffer[:4]).tobytes() == b"GGUF"
    st.close()
    assert st.stats()["n_copies"] == 0 and mid not in st
