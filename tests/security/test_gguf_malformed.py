"""Malformed GGUF corpus and a mutation fuzzer: every bad file is a GGUFError naming field and offset.

Files are built byte by byte with the tiny writer below, which (unlike gguf.GGUFWriter) can emit
any header, valid or not. Nothing here may crash, hang or allocate in proportion to a count in
the file.
"""

from __future__ import annotations

import struct
import tracemalloc
from dataclasses import dataclass, field

import pytest

from realm.errors import GGUFError
from realm.gguf import GGUFFile, GGUFValueType as VT
from realm.quants import GGMLType

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

U64_MAX = 2**64 - 1


# -- a writer that can lie ------------------------------------------------------------------------

def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(s: str | bytes, length: int | None = None) -> bytes:
    """A GGUF string: u64 length (or a forged one) then the bytes."""
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b) if length is None else length) + b


def kv(key: str | bytes, vtype: int, payload: bytes, key_length: int | None = None) -> bytes:
    return gstr(key, key_length) + u32(vtype) + payload


def arr(elem_type: int, items: list[bytes], count: int | None = None) -> bytes:
    """An array payload (without the outer ARRAY type id)."""
    return u32(elem_type) + u64(len(items) if count is None else count) + b"".join(items)


def tinfo(name: str | bytes, ne: tuple[int, ...], ggml_type: int, offset: int,
          n_dims: int | None = None, name_length: int | None = None) -> bytes:
    return (gstr(name, name_length) + u32(len(ne) if n_dims is None else n_dims)
            + b"".join(u64(d) for d in ne) + u32(ggml_type) + u64(offset))


@dataclass
class Image:
    """Pieces of a GGUF file; `bytes()` assembles them (padding the header to `alignment`)."""

    kvs: list[bytes] = field(default_factory=list)
    tensors: list[bytes] = field(default_factory=list)
    data: bytes = b""
    magic: bytes = b"GGUF"
    version: int = 3
    n_tensors: int | None = None
    n_kv: int | None = None
    alignment: int = 32

    def header(self) -> bytes:
        return (self.magic + u32(self.version)
                + u64(len(self.tensors) if self.n_tensors is None else self.n_tensors)
                + u64(len(self.kvs) if self.n_kv is None else self.n_kv)
                + b"".join(self.kvs) + b"".join(self.tensors))

    def __bytes__(self) -> bytes:
        head = self.header()
        pad = -len(head) % self.alignment
        return head + b"\0" * pad + self.data


F32 = int(GGMLType.F32)
Q4_0 = int(GGMLType.Q4_0)


def valid_image() -> Image:
    """A small valid file: every value kind once, two tensors (F32 (8,), Q4_0 (32, 2))."""
    return Image(
        kvs=[
            kv("general.architecture", VT.STRING, gstr("llama")),
            kv("t.u8", VT.UINT8, bytes([7])),
            kv("t.bool", VT.BOOL, bytes([1])),
            kv("t.f32", VT.FLOAT32, struct.pack("<f", 1.5)),
            kv("t.i64", VT.INT64, struct.pack("<q", -5)),
            kv("a.str", VT.ARRAY, arr(VT.STRING, [gstr("a"), gstr("bc"), gstr("")])),
            kv("a.i32", VT.ARRAY, arr(VT.INT32, [struct.pack("<i", v) for v in (1, -2, 3)])),
            kv("a.nested", VT.ARRAY, arr(VT.ARRAY, [arr(VT.UINT8, [b"\x01", b"\x02"]), arr(VT.UINT8, [])])),
        ],
        tensors=[tinfo("norm.weight", (8,), F32, 0), tinfo("q.weight", (32, 2), Q4_0, 32)],
        data=bytes(range(32)) + bytes(range(36)),
    )


def with_kv(*kvs: bytes, **kw) -> bytes:
    """A file with the given metadata entries and no tensors."""
    return bytes(Image(kvs=list(kvs), **kw))


def with_tensors(*tensors: bytes, data: bytes = b"\0" * 256, kvs: list[bytes] | None = None, **kw) -> bytes:
    return bytes(Image(kvs=kvs or [], tensors=list(tensors), data=data, **kw))


def nested(depth: int) -> bytes:
    """An ARRAY payload nesting `depth` arrays, innermost holding one u8."""
    payload = arr(VT.UINT8, [b"\x01"])
    for _ in range(depth - 1):
        payload = arr(VT.ARRAY, [payload])
    return payload


def alignment_kv(vtype: int, payload: bytes) -> bytes:
    return kv("general.alignment", vtype, payload)


# -- the corpus: (id, bytes, text the message or field must contain) ----------------------------------

VALID = bytes(valid_image())
HEADER_END = len(valid_image().header())
ARCH_KV = with_kv(kv("general.architecture", VT.STRING, gstr("llama-with-a-long-name")))
TNAME = "weight.name.x"  # 13 bytes

CORPUS: list[tuple[str, bytes, str]] = [
    ("empty_file", b"", "empty"),
    ("three_bytes", b"GGU", "magic"),
    ("bad_magic", b"GGML" + VALID[4:], "magic"),
    ("text_file", b"hello, this is not a model\n" * 4, "magic"),
    ("version_0", bytes(Image(version=0)), "version"),
    ("version_1", bytes(Image(version=1)), "version"),
    ("version_4", bytes(Image(version=4)), "version"),
    ("version_big_endian_3", bytes(Image(version=0x03000000)), "big-endian"),
    ("version_big_endian_2", bytes(Image(version=0x02000000)), "big-endian"),
    ("truncated_after_magic", b"GGUF", "version"),
    ("truncated_in_version", b"GGUF\x03\x00", "version"),
    ("truncated_before_tensor_count", b"GGUF" + u32(3), "tensor_count"),
    ("truncated_before_kv_count", b"GGUF" + u32(3) + u64(0), "kv_count"),
    ("truncated_in_kv_count", b"GGUF" + u32(3) + u64(0) + b"\x01\x00", "kv_count"),
    ("truncated_after_header", VALID[:24], "needs at least"),
    # cut inside a field, with enough bytes left to pass the up-front count bounds
    ("truncated_in_first_key", ARCH_KV[:24 + 8 + 10], "kv[0].key"),
    ("truncated_before_value_type", ARCH_KV[:24 + 8 + 20 + 2], "general.architecture.type"),
    ("truncated_in_string_value", ARCH_KV[:24 + 8 + 20 + 4 + 8 + 2], "general.architecture"),
    ("truncated_in_tensor_infos", VALID[:HEADER_END - 10], "needs at least"),
    ("truncated_in_padding", VALID[:HEADER_END + 1], "needs at least"),
    ("truncated_in_tensor_data", VALID[:-1], "needs at least"),
    ("tensor_count_u64_max", bytes(Image(n_tensors=U64_MAX)), "tensor_count"),
    ("tensor_count_1e9", bytes(Image(n_tensors=10**9)), "tensor_count"),
    ("kv_count_u64_max", bytes(Image(n_kv=U64_MAX)), "kv_count"),
    ("kv_count_1e9", bytes(Image(n_kv=10**9)), "kv_count"),
    ("tensor_count_2_20_tiny_file", bytes(Image(n_tensors=2**20)), "needs at least"),
    ("kv_count_2_20_tiny_file", bytes(Image(n_kv=2**20)), "needs at least"),
    ("tensor_count_over_limit", bytes(Image(n_tensors=2**20 + 1)), "limit"),
    ("kv_count_over_limit", bytes(Image(n_kv=2**20 + 1)), "limit"),
    ("kv_count_one_too_many", bytes(Image(kvs=valid_image().kvs, n_kv=9)), "kv[8]"),
    ("key_length_past_end", with_kv(kv("abc", VT.UINT8, b"\x01", key_length=1000)), "needs at least"),
    ("key_length_2_63", with_kv(kv("abc", VT.UINT8, b"\x01", key_length=2**63)), "kv[0].key"),
    ("key_empty", with_kv(kv("", VT.UINT8, b"\x01")), "empty metadata key"),
    ("key_too_long", with_kv(kv("k" * 70000, VT.UINT8, b"\x01")), "limit"),
    ("key_invalid_utf8", with_kv(kv(b"bad\xff\xfekey", VT.UINT8, b"\x01")), "UTF-8"),
    ("key_duplicate", with_kv(kv("a", VT.UINT8, b"\x01"), kv("a", VT.UINT8, b"\x02")), "duplicate"),
    ("value_type_13", with_kv(kv("a", 13, b"\x01" * 8)), "value type"),
    ("value_type_u32_max", with_kv(kv("a", 0xFFFFFFFF, b"\x01" * 8)), "value type"),
    ("bool_2", with_kv(kv("a.bool", VT.BOOL, b"\x02")), "bool"),
    ("bool_255", with_kv(kv("a.bool", VT.BOOL, b"\xff")), "bool"),
    ("scalar_truncated_u64", with_kv(kv("a.u64", VT.UINT64, b"\x01\x02\x03"))[:24 + 8 + 5 + 4 + 3], "a.u64"),
    ("string_length_past_end", with_kv(kv("s", VT.STRING, gstr("abc", length=100))), "needs at least"),
    ("string_length_2_63", with_kv(kv("s", VT.STRING, gstr("abc", length=2**63))), "needs at least"),
    ("string_length_u64_max", with_kv(kv("s", VT.STRING, gstr("abc", length=U64_MAX))), "needs at least"),
    ("string_invalid_utf8", with_kv(kv("s", VT.STRING, gstr(b"caf\xc3"))), "UTF-8"),
    ("string_overlong_utf8", with_kv(kv("s", VT.STRING, gstr(b"\xc0\xaf"))), "UTF-8"),
    ("string_surrogate_utf8", with_kv(kv("s", VT.STRING, gstr(b"\xed\xa0\x80"))), "UTF-8"),
    ("array_count_1e9_u8", with_kv(kv("a", VT.ARRAY, arr(VT.UINT8, [b"\x01"], count=10**9))), "needs at least"),
    ("array_count_u64_max_f64", with_kv(kv("a", VT.ARRAY, arr(VT.FLOAT64, [], count=U64_MAX))), "a.count"),
    ("array_count_2_63_i32", with_kv(kv("a", VT.ARRAY, arr(VT.INT32, [], count=2**63))), "a.count"),
    ("string_array_1e9", with_kv(kv("tok", VT.ARRAY, arr(VT.STRING, [gstr("x")], count=10**9))), "needs at least"),
    ("string_array_elem_past_end", with_kv(kv("tok", VT.ARRAY, arr(VT.STRING, [gstr("x"), gstr("y", 50)]))),
     "tok[1]"),
    ("string_array_elem_2_63", with_kv(kv("tok", VT.ARRAY, arr(VT.STRING, [gstr("x"), gstr("y", 2**63)]))),
     "tok[1]"),
    ("string_array_elem_invalid_utf8", with_kv(kv("tok", VT.ARRAY, arr(VT.STRING, [gstr("ok"), gstr(b"\x80")]))),
     "tok[1]"),
    ("string_array_elem_length_truncated",
     Image(kvs=[kv("tok", VT.ARRAY, arr(VT.STRING, [gstr("x" * 30), b"\x01\x00\x00"], count=3))]).header(),
     "tok[1] length"),
    ("array_elem_type_13", with_kv(kv("a", VT.ARRAY, arr(13, [b"\x00" * 8]))), "value type"),
    ("array_elem_type_big", with_kv(kv("a", VT.ARRAY, arr(0x80000000, [b"\x00" * 8]))), "value type"),
    ("array_bool_2", with_kv(kv("a", VT.ARRAY, arr(VT.BOOL, [b"\x01", b"\x00", b"\x02"]))), "a[2]"),
    ("array_nested_too_deep", with_kv(kv("deep", VT.ARRAY, nested(4))), "nested"),
    ("array_nested_very_deep", with_kv(kv("deep", VT.ARRAY, nested(5000))), "nested"),
    ("array_nested_count_bomb", with_kv(kv("n", VT.ARRAY, arr(VT.ARRAY, [arr(VT.UINT8, [])], count=10**9))),
     "limit"),
    ("array_nested_count_2_20_tiny_file", with_kv(kv("n", VT.ARRAY, arr(VT.ARRAY, [arr(VT.UINT8, [])],
                                                                         count=2**20))), "needs at least"),
    ("array_nested_total_over_limit", with_kv(kv("n", VT.ARRAY, arr(VT.ARRAY, [arr(VT.UINT8, [])])),
                                              kv("m", VT.ARRAY, arr(VT.ARRAY, [arr(VT.UINT8, [])], count=2**20))),
     "limit"),
    ("array_nested_inner_bomb", with_kv(kv("n", VT.ARRAY, arr(VT.ARRAY, [arr(VT.STRING, [], count=2**62)]))),
     "n[0].count"),
    ("alignment_0", with_kv(alignment_kv(VT.UINT32, u32(0))), "power of two"),
    ("alignment_3", with_kv(alignment_kv(VT.UINT32, u32(3))), "power of two"),
    ("alignment_96", with_kv(alignment_kv(VT.UINT32, u32(96))), "power of two"),
    ("alignment_u64", with_kv(alignment_kv(VT.UINT64, u64(32))), "UINT32"),
    ("alignment_i32", with_kv(alignment_kv(VT.INT32, u32(32))), "UINT32"),
    ("alignment_string", with_kv(alignment_kv(VT.STRING, gstr("32"))), "UINT32"),
    ("tensor_name_64_bytes", with_tensors(tinfo("n" * 64, (8,), F32, 0)), "limit"),
    ("tensor_name_past_end", with_tensors(tinfo("w", (8,), F32, 0, name_length=60), data=b""), "needs at least"),
    ("tensor_name_2_63", with_tensors(tinfo("w", (8,), F32, 0, name_length=2**63)), "tensor[0].name"),
    ("tensor_name_empty", with_tensors(tinfo("", (8,), F32, 0)), "empty tensor name"),
    ("tensor_name_invalid_utf8", with_tensors(tinfo(b"w\xffx", (8,), F32, 0)), "UTF-8"),
    ("tensor_name_duplicate", with_tensors(tinfo("w", (8,), F32, 0), tinfo("w", (8,), F32, 32)), "duplicate"),
    ("n_dims_0", with_tensors(tinfo("w", (), F32, 0)), "n_dims"),
    ("n_dims_5", with_tensors(tinfo("w", (1, 1, 1, 1, 1), F32, 0)), "n_dims"),
    ("n_dims_u32_max", with_tensors(tinfo("w", (8,), F32, 0, n_dims=0xFFFFFFFF)), "n_dims"),
    ("dim_0", with_tensors(tinfo("w", (8, 0), F32, 0)), "ne[1]"),
    ("dim_2_63_plus_1", with_tensors(tinfo("w", (2**63 + 1,), F32, 0)), "ne[0]"),
    ("dim_u64_max", with_tensors(tinfo("w", (8, U64_MAX), F32, 0)), "ne[1]"),
    ("n_elements_overflow", with_tensors(tinfo("w", (2**32, 2**32), F32, 0)), "overflow"),
    ("n_elements_overflow_4d", with_tensors(tinfo("w", (2**16, 2**16, 2**16, 2**16), GGMLType.I8, 0)), "overflow"),
    ("n_bytes_overflow", with_tensors(tinfo("w", (2**31, 2**31), F32, 0)), "overflow"),
    ("type_99", with_tensors(tinfo("w", (8,), 99, 0)), "unknown ggml type"),
    ("type_4_removed_q4_2", with_tensors(tinfo("w", (32,), 4, 0)), "unknown ggml type"),
    ("type_u32_max", with_tensors(tinfo("w", (8,), 0xFFFFFFFF, 0)), "unknown ggml type"),
    ("ne0_not_block_multiple_q4_0", with_tensors(tinfo("w", (33, 2), Q4_0, 0)), "block size"),
    ("ne0_not_block_multiple_q4_k", with_tensors(tinfo("w", (128,), GGMLType.Q4_K, 0)), "block size"),
    ("offset_misaligned", with_tensors(tinfo("w", (8,), F32, 1)), "alignment"),
    ("offset_misaligned_custom", with_tensors(tinfo("w", (8,), F32, 64), kvs=[alignment_kv(VT.UINT32, u32(128))],
                                              alignment=128), "alignment"),
    ("data_past_eof", with_tensors(tinfo("w", (1024,), F32, 0), data=b"\0" * 100), "needs at least"),
    ("data_one_byte_short", with_tensors(tinfo("w", (8,), F32, 0), data=b"\0" * 31), "needs at least"),
    ("offset_past_eof", with_tensors(tinfo("w", (8,), F32, 2**32)), "needs at least"),
    ("offset_wraps", with_tensors(tinfo("w", (64,), F32, 2**64 - 32)), "wraps"),
    ("tensors_overlap_same_offset", with_tensors(tinfo("a", (8,), F32, 0), tinfo("b", (8,), F32, 0)), "overlaps"),
    ("tensors_overlap_partial", with_tensors(tinfo("a", (16,), F32, 0), tinfo("b", (8,), F32, 32)), "overlaps"),
    ("tensors_overlap_contained", with_tensors(tinfo("big", (64,), F32, 0), tinfo("small", (8,), F32, 64),
                                               data=b"\0" * 512), "overlaps"),
    ("truncated_in_n_dims", with_tensors(tinfo("n" * 40, (8,), F32, 0))[:24 + 8 + 40 + 2], "n_dims"),
    ("truncated_in_dims", with_tensors(tinfo(TNAME, (8, 8), F32, 0))[:24 + 8 + 13 + 4 + 12], "ne[1]"),
    ("truncated_in_type", with_tensors(tinfo(TNAME, (8,), F32, 0))[:24 + 8 + 13 + 4 + 8 + 2], f"{TNAME}.type"),
    ("truncated_in_offset", with_tensors(tinfo(TNAME, (8,), F32, 0))[:24 + 8 + 13 + 4 + 8 + 4 + 5],
     f"{TNAME}.offset"),
]


def test_corpus_is_big_and_distinct():
    names = [c[0] for c in CORPUS]
    assert len(names) >= 40 and len(set(names)) == len(names)
    assert len({c[1] for c in CORPUS}) == len(CORPUS)


def test_valid_baseline_opens():
    """The corpus perturbs files like this one, so it must itself be fine."""
    g = GGUFFile(VALID)
    assert g.metadata["a.str"] == ["a", "bc", ""]
    assert g.metadata["t.bool"] is True
    assert g.metadata["a.i32"].tolist() == [1, -2, 3]
    assert [a.tolist() for a in g.metadata["a.nested"]] == [[1, 2], []]
    assert list(g.tensors) == ["norm.weight", "q.weight"]
    assert g.tensor_rows("q.weight").shape == (2, 18)
    assert g.data_offset == HEADER_END + (-HEADER_END % 32)
    # the helpers' building blocks are valid when used honestly
    assert GGUFFile(with_tensors(tinfo("a", (8,), F32, 0), tinfo("b", (8,), F32, 32))).tensors["b"].offset > 0
    assert GGUFFile(with_kv(alignment_kv(VT.UINT32, u32(64)))).alignment == 64
    assert GGUFFile(with_kv(kv("deep", VT.ARRAY, nested(3)))).metadata["deep"][0][0].tolist() == [1]


def check_error(err: GGUFError, data: bytes) -> None:
    assert err.field is not None and err.offset is not None, str(err)
    assert 0 <= err.offset <= len(data), str(err)
    assert f"offset {err.offset}" in str(err)


@pytest.mark.parametrize("name,data,expect", CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_bytes(name, data, expect):
    with pytest.raises(GGUFError) as info:
        GGUFFile(data)
    check_error(info.value, data)
    assert expect in str(info.value) or expect in info.value.field, f"{name}: {info.value}"


@pytest.mark.parametrize("name,data,expect", CORPUS[::7], ids=[c[0] for c in CORPUS[::7]])
def test_malformed_files_on_disk(tmp_path, name, data, expect):
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError) as info:
        GGUFFile(path)
    check_error(info.value, data)


def test_every_truncation_fails():
    """Each proper prefix of the valid file (cut inside any field or section) is rejected."""
    for n in range(len(VALID)):
        with pytest.raises(GGUFError) as info:
            GGUFFile(VALID[:n])
        check_error(info.value, VALID[:n])


@pytest.mark.parametrize("name", ["tensor_count_u64_max", "kv_count_1e9", "string_array_1e9", "array_count_1e9_u8",
                                  "array_nested_count_bomb", "key_length_2_63", "n_elements_overflow"])
def test_count_bombs_allocate_nothing(name):
    data = dict((c[0], c[1]) for c in CORPUS)[name]
    tracemalloc.start()
    try:
        with pytest.raises(GGUFError, match="needs at least|limit|overflow"):
            GGUFFile(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{name}: peak allocation {peak} bytes"


def test_big_endian_writer_output_rejected(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "be.gguf"
    w = gguf.GGUFWriter(path, arch="llama", endianess=gguf.GGUFEndian.BIG)
    w.add_uint32("llama.block_count", 2)
    w.add_tensor("w", np.arange(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match="big-endian GGUF not supported") as info:
        GGUFFile(path)
    assert info.value.field == "version" and info.value.offset == 4


def test_non_gguf_inputs(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n")
    with pytest.raises(GGUFError, match="magic") as info:
        GGUFFile(text)
    check_error(info.value, b"x" * 100)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError, match="empty"):
        GGUFFile(empty)
    with pytest.raises(GGUFError, match="directory"):
        GGUFFile(tmp_path)
    with pytest.raises(GGUFError):
        GGUFFile(12345)  # not bytes-like
    assert GGUFFile(VALID).path is None  # bytes input works
    assert GGUFFile(bytearray(VALID)).tensors["q.weight"].n_bytes == 36
    assert GGUFFile(memoryview(VALID)).metadata["t.i64"] == -5


# -- fuzzing --------------------------------------------------------------------------------------

EXTREME_U64 = [0, 1, 2**8, 2**31, 2**32 - 1, 2**32, 10**9, 2**62, 2**63 - 1, 2**63, 2**63 + 1, U64_MAX]
EXTREME_U32 = [0, 1, 2, 3, 4, 5, 9, 12, 13, 99, 2**31, 2**32 - 1]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(VALID) - 1), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, len(VALID))),
    st.tuples(st.just("insert"), st.integers(0, len(VALID)), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, len(VALID) - 1), st.integers(1, 16)),
    st.tuples(st.just("u64"), st.integers(0, len(VALID) - 8), st.sampled_from(EXTREME_U64)),
    st.tuples(st.just("u32"), st.integers(0, len(VALID) - 4), st.sampled_from(EXTREME_U32)),
)


def mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op in ops:
        kind, pos = op[0], min(op[1], len(b))
        if kind == "flip" and pos < len(b):
            b[pos] ^= 1 << op[2]
        elif kind == "truncate":
            del b[pos:]
        elif kind == "insert":
            b[pos:pos] = op[2]
        elif kind == "delete":
            del b[pos:pos + op[2]]
        elif kind == "u64" and pos + 8 <= len(b):
            b[pos:pos + 8] = u64(op[2])
        elif kind == "u32" and pos + 4 <= len(b):
            b[pos:pos + 4] = u32(op[2])
    return bytes(b)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_mutations_only_raise_gguf_error(ops):
    data = mutate(VALID, ops)
    try:
        g = GGUFFile(data)
    except GGUFError as err:
        check_error(err, data)
        return
    # accepted: then every tensor view must lie inside the file and have the declared size
    for t in g.tensors.values():
        assert g.data_offset <= t.offset and t.offset + t.n_bytes <= len(data)
        assert g.tensor_bytes(t.name).size == t.n_bytes
        rows = g.tensor_rows(t.name)
        assert rows.shape[0] * rows.shape[1] == t.n_bytes
