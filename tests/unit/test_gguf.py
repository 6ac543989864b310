"""realm.gguf against gguf-py's GGUFReader (the independent oracle) on synthetic, vocab and real files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from realm.errors import ConfigError, GGUFError, ModelNotFoundError
from realm.gguf import DEFAULT_ALIGNMENT, GGUFFile, GGUFValueType, TensorInfo
from realm.quants import GGMLType, block_size_and_bytes

gguf = pytest.importorskip("gguf")

VT = gguf.GGUFValueType
rng = np.random.default_rng(0)


class _NumpyReadingWholeFile:
    """numpy, except that `memmap` reads the file into a plain read-only ndarray.

    GGUFReader slices its buffer once per array element; a memmap slice costs ~10 us of Python
    (memmap.__getitem__/__array_finalize__), a plain ndarray slice far less. Only the storage
    changes, not the oracle's parsing.
    """

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def memmap(path, mode="r"):
        data = np.fromfile(path, dtype=np.uint8)
        data.flags.writeable = False
        return data


def gguf_reader(path):
    """gguf.GGUFReader(path) over an in-memory copy of the file (about twice as fast)."""
    module = gguf.gguf_reader
    saved = module.np
    module.np = _NumpyReadingWholeFile()
    try:
        return gguf.GGUFReader(path)
    finally:
        module.np = saved


# -- differential helpers ---------------------------------------------------------------------------

def _flatten(value) -> list:
    """A nested metadata value as the flat list of leaves GGUFReader.contents() returns."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        out = []
        for v in value:
            out.extend(_flatten(v) if isinstance(v, (list, np.ndarray)) else [v])
        return out
    return [value]


def _leaf_arrays(value) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, list):
        return [a for v in value for a in _leaf_arrays(v)]
    return []


def assert_same_as_reader(ours: GGUFFile, reader) -> None:
    """Every key, value, value type, tensor name/type/shape/offset/size equal to GGUFReader's view."""
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.metadata) == list(fields), "keys or key order differ"
    assert ours.alignment == reader.alignment
    assert ours.data_offset == reader.data_offset
    assert ours.file_size == len(reader.data)
    for key, field in fields.items():
        types = [GGUFValueType(int(t)) for t in field.types]
        value = ours.metadata[key]
        assert ours.metadata_types[key] == types[0], key
        if types[0] == GGUFValueType.ARRAY:
            assert ours.array_types[key] == types[1], key
            leaf = types[-1]
            expected = field.contents()
            got = _flatten(value)
            if leaf in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
                np.testing.assert_array_equal(np.array(got, dtype=np.float64),
                                              np.array(expected, dtype=np.float64), err_msg=key)
            else:
                assert got == expected, key
            if leaf not in (GGUFValueType.STRING, GGUFValueType.ARRAY):
                expected_dtype = np.dtype(reader.gguf_scalar_to_np[VT(leaf)]).newbyteorder("<")
                for arr in _leaf_arrays(value):
                    assert arr.dtype.newbyteorder("<") == expected_dtype, key
                    assert arr.ndim == 1 and not arr.flags.writeable, key
                raw = b"".join(field.parts[i].tobytes() for i in field.data)
                assert b"".join(a.tobytes() for a in _leaf_arrays(value)) == raw, key
            if types[1] == GGUFValueType.STRING:
                assert isinstance(value, list) and all(isinstance(s, str) for s in value), key
        else:
            expected = field.contents()
            if types[0] in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64) and np.isnan(expected):
                assert np.isnan(value), key
            else:
                assert value == expected, key
            assert type(value) is {GGUFValueType.STRING: str, GGUFValueType.BOOL: bool,
                                   GGUFValueType.FLOAT32: float, GGUFValueType.FLOAT64: float}.get(types[0], int), key

    assert list(ours.tensors) == [t.name for t in reader.tensors]
    for rt in reader.tensors:
        t = ours.tensors[rt.name]
        assert isinstance(t, TensorInfo)
        assert t.ggml_type == GGMLType(int(rt.tensor_type)) and isinstance(t.ggml_type, GGMLType), rt.name
        assert t.ne == tuple(int(d) for d in rt.shape), rt.name
        assert t.shape == t.ne[::-1]
        assert t.n_elements == rt.n_elements, rt.name
        assert t.n_bytes == rt.n_bytes, rt.name
        assert t.offset == rt.data_offset, rt.name
        data = ours.tensor_bytes(rt.name)
        assert data.dtype == np.uint8 and data.shape == (t.n_bytes,) and not data.flags.writeable
        assert data.tobytes() == reader.data[rt.data_offset:rt.data_offset + rt.n_bytes].tobytes(), rt.name
        rows = ours.tensor_rows(rt.name)
        assert rows.shape == (t.n_elements // t.ne[0], t.n_bytes // (t.n_elements // t.ne[0])), rt.name
        assert not rows.flags.writeable


# -- synthetic files ----------------------------------------------------------------------------------

SCALARS = [
    ("t.u8", 200, VT.UINT8), ("t.i8", -100, VT.INT8), ("t.u16", 65000, VT.UINT16), ("t.i16", -32000, VT.INT16),
    ("t.u32", 4_000_000_000, VT.UINT32), ("t.i32", -2_000_000_000, VT.INT32), ("t.f32", 1.5e-7, VT.FLOAT32),
    ("t.bool_true", True, VT.BOOL), ("t.bool_false", False, VT.BOOL), ("t.str", "héllo wörld ✓ 🦙", VT.STRING),
    ("t.str_empty", "", VT.STRING), ("t.u64", 2**64 - 1, VT.UINT64), ("t.i64", -(2**63), VT.INT64),
    ("t.f64", -2.5e300, VT.FLOAT64), ("t.f32_nan", float("nan"), VT.FLOAT32),
    ("t.f32_inf", float("-inf"), VT.FLOAT32),
]

ARRAYS = [
    ("a.u8", [0, 1, 255], VT.UINT8), ("a.i8", [-128, 0, 127], VT.INT8), ("a.u16", [0, 65535], VT.UINT16),
    ("a.i16", [-32768, 32767], VT.INT16), ("a.u32", [0, 2**32 - 1, 7], VT.UINT32),
    ("a.i32", [-(2**31), 2**31 - 1], VT.INT32), ("a.f32", [0.5, -1.25, 3e38], VT.FLOAT32),
    ("a.bool", [True, False, True, True], VT.BOOL), ("a.u64", [0, 2**64 - 1], VT.UINT64),
    ("a.i64", [-(2**63), 2**63 - 1], VT.INT64), ("a.f64", [1e-300, -0.0, 2.0], VT.FLOAT64),
    ("a.str", ["", "a", "ünïcödé", "<0x0A>", "▁the", "\u0000nul"], VT.STRING),
]

NESTED = [
    ("n.ints", [[1, 2, 3], [4], [5, 6]]),
    ("n.strs", [["a", "bc"], ["d"]]),
    ("n.deep", [[[1, 2], [3]], [[4, 5, 6]]]),
]

# (name, ggml type, ne in GGUF order); ne[0] a multiple of the block size
TENSORS = [
    ("f32_1d", GGMLType.F32, (7,)),
    ("f16_2d", GGMLType.F16, (5, 3)),
    ("bf16_3d", GGMLType.BF16, (4, 3, 2)),
    ("f64_4d", GGMLType.F64, (2, 3, 2, 2)),
    ("i8", GGMLType.I8, (9,)), ("i16", GGMLType.I16, (3, 2)), ("i32", GGMLType.I32, (5,)),
    ("i64", GGMLType.I64, (2, 2)),
    ("q4_0", GGMLType.Q4_0, (64, 3)), ("q4_1", GGMLType.Q4_1, (32, 2)), ("q5_0", GGMLType.Q5_0, (96, 1)),
    ("q5_1", GGMLType.Q5_1, (32, 4)), ("q8_0", GGMLType.Q8_0, (64, 2, 3)), ("q8_1", GGMLType.Q8_1, (32,)),
    ("q2_k", GGMLType.Q2_K, (256, 2)), ("q3_k", GGMLType.Q3_K, (512, 1)), ("q4_k", GGMLType.Q4_K, (256, 3)),
    ("q5_k", GGMLType.Q5_K, (256, 2, 2)), ("q6_k", GGMLType.Q6_K, (256, 5)), ("q8_k", GGMLType.Q8_K, (256,)),
    ("iq2_xxs", GGMLType.IQ2_XXS, (256, 2)), ("iq4_nl", GGMLType.IQ4_NL, (32, 3)),
    ("iq4_xs", GGMLType.IQ4_XS, (256,)), ("tq1_0", GGMLType.TQ1_0, (256,)), ("mxfp4", GGMLType.MXFP4, (64, 2)),
    ("blk.0.attn_q.weight", GGMLType.Q4_K, (256, 256)),
]

_NUMPY_TYPES = {GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.F64: np.float64,
                GGMLType.I8: np.int8, GGMLType.I16: np.int16, GGMLType.I32: np.int32, GGMLType.I64: np.int64}


def _tensor_data(ggml_type: GGMLType, ne: tuple[int, ...]) -> tuple[np.ndarray, object]:
    """(array to hand GGUFWriter.add_tensor, raw_dtype) for a tensor of this type and ne."""
    shape = ne[::-1]
    if ggml_type in _NUMPY_TYPES:
        return (rng.standard_normal(shape) * 100).astype(_NUMPY_TYPES[ggml_type]), None
    bs, ts = block_size_and_bytes(ggml_type)
    raw = rng.integers(0, 256, size=(*shape[:-1], shape[-1] // bs * ts), dtype=np.uint8)
    return raw, gguf.GGMLQuantizationType(int(ggml_type))


def write_synthetic(path: Path, alignment: int | None = None, tensors=TENSORS, with_metadata=True) -> Path:
    w = gguf.GGUFWriter(path, arch="llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    if with_metadata:
        for key, val, vt in SCALARS:
            w.add_key_value(key, val, vt)
        for key, val, vt in ARRAYS:
            w.add_key_value(key, val, VT.ARRAY, sub_type=vt)
        for key, val in NESTED:
            w.add_array(key, val)
        w.add_array("a.many_str", [f"tok{i}" * (i % 5) for i in range(3000)])
    for name, ggml_type, ne in tensors:
        data, raw_dtype = _tensor_data(ggml_type, ne)
        w.add_tensor(name, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("gguf") / "synthetic.gguf")


@pytest.mark.parametrize("alignment", [None, 1, 8, 64, 4096])
def test_synthetic_matches_reader(tmp_path, alignment):
    path = write_synthetic(tmp_path / "s.gguf", alignment=alignment)
    with GGUFFile(path) as ours:
        assert_same_as_reader(ours, gguf_reader(path))
        assert ours.alignment == (alignment or DEFAULT_ALIGNMENT)
        assert ours.version == 3
        assert ours.path == path
        for t in ours.tensors.values():
            assert (t.offset - ours.data_offset) % ours.alignment == 0


def test_metadata_only_and_tensors_only(tmp_path):
    for name, kwargs in (("meta", dict(tensors=[])), ("tens", dict(with_metadata=False))):
        path = write_synthetic(tmp_path / f"{name}.gguf", **kwargs)
        with GGUFFile(path) as ours:
            assert_same_as_reader(ours, gguf_reader(path))


def test_version_2_reads_like_3(tmp_path, synthetic):
    data = bytearray(synthetic.read_bytes())
    struct.pack_into("<I", data, 4, 2)
    path = tmp_path / "v2.gguf"
    path.write_bytes(bytes(data))
    with GGUFFile(path) as ours:
        assert ours.version == 2
        assert_same_as_reader(ours, gguf_reader(path))


def test_values_and_types(synthetic):
    with GGUFFile(synthetic) as g:
        for key, val, vt in SCALARS:
            assert g.metadata_types[key] == GGUFValueType(int(vt))
            if key != "t.f32_nan":
                assert g.metadata[key] == (np.float32(val).item() if vt == VT.FLOAT32 else val)
        for key, val, vt in ARRAYS:
            assert g.metadata_types[key] == GGUFValueType.ARRAY
            assert g.array_types[key] == GGUFValueType(int(vt))
            if vt == VT.STRING:
                assert g.metadata[key] == val
            else:
                assert isinstance(g.metadata[key], np.ndarray) and not g.metadata[key].flags.writeable
                np.testing.assert_array_equal(g.metadata[key], np.array(val, dtype=g.metadata[key].dtype))
        assert g.metadata["a.bool"].dtype == np.bool_
        assert g.metadata["general.architecture"] == "llama"
        assert g.array_types["n.ints"] == GGUFValueType.ARRAY
        assert [a.tolist() for a in g.metadata["n.ints"]] == [[1, 2, 3], [4], [5, 6]]
        assert g.metadata["n.strs"] == [["a", "bc"], ["d"]]
        assert [[a.tolist() for a in inner] for inner in g.metadata["n.deep"]] == [[[1, 2], [3]], [[4, 5, 6]]]


def test_tensor_views(synthetic):
    with GGUFFile(synthetic) as g:
        assert g.buffer.dtype == np.uint8 and g.buffer.shape == (g.file_size,) and not g.buffer.flags.writeable
        assert g.file_size == synthetic.stat().st_size
        t = g.tensors["blk.0.attn_q.weight"]
        assert t.ggml_type is GGMLType.Q4_K and t.ne == (256, 256) and t.shape == (256, 256)
        assert t.n_bytes == 256 * 144 and t.n_elements == 256 * 256
        rows = g.tensor_rows(t.name)
        assert rows.shape == (256, 144)
        assert np.shares_memory(rows, g.buffer)
        t3 = g.tensors["q8_0"]
        assert g.tensor_rows("q8_0").shape == (6, 68) and t3.shape == (3, 2, 64)
        f = g.tensors["f32_1d"]
        x = g.tensor_bytes("f32_1d").view(np.float32)
        assert x.shape == (7,)
        with pytest.raises(ValueError):
            g.tensor_bytes("f32_1d")[0] = 1
        with pytest.raises(GGUFError):
            g.tensor_bytes("no.such.tensor")
        assert f.offset >= g.data_offset


def test_bytes_input_equals_path_input(synthetic):
    raw = synthetic.read_bytes()
    a = GGUFFile(synthetic)
    for source in (raw, bytearray(raw), memoryview(raw), np.frombuffer(raw, np.uint8)):
        b = GGUFFile(source)
        assert b.path is None and b.file_size == len(raw)
        assert list(b.tensors.values()) == list(a.tensors.values())
        assert list(b.metadata) == list(a.metadata)
        assert b.metadata["a.str"] == a.metadata["a.str"]
        for name in a.tensors:
            assert b.tensor_bytes(name).tobytes() == a.tensor_bytes(name).tobytes()
        b.close()
    a.close()


def test_writable_source_is_copied(synthetic):
    raw = bytearray(synthetic.read_bytes())
    g = GGUFFile(raw)
    t = g.tensors["i8"]
    before = g.tensor_bytes("i8").tobytes()
    raw[t.offset:t.offset + t.n_bytes] = b"\x7f" * t.n_bytes
    assert g.tensor_bytes("i8").tobytes() == before


def test_close_and_context_manager(synthetic):
    g = GGUFFile(synthetic)
    view = g.tensor_bytes("i32")
    expected = view.tobytes()
    g.close()
    assert view.tobytes() == expected  # handed-out views stay valid
    with pytest.raises(GGUFError):
        g.tensor_bytes("i32")
    g.close()  # idempotent
    with GGUFFile(synthetic) as g2:
        assert len(g2.tensors) == len(TENSORS)
    with pytest.raises(GGUFError):
        g2.buffer


def test_typed_accessors(synthetic):
    with GGUFFile(synthetic) as g:
        assert g.get_int("t.u32") == 4_000_000_000
        assert g.get_int("t.i64") == -(2**63)
        assert g.get_int("missing.key", default=7) == 7
        assert g.get_int("missing.key", default=None) is None
        assert g.get_float("t.f64") == -2.5e300
        assert g.get_float("t.u8") == 200.0 and isinstance(g.get_float("t.u8"), float)
        assert g.get_str("t.str") == "héllo wörld ✓ 🦙"
        assert g.get_bool("t.bool_true") is True
        assert g.get_array("a.str") == ARRAYS[-1][1]
        assert g.get_array("a.u32", element_type=GGUFValueType.UINT32).tolist() == [0, 2**32 - 1, 7]
        with pytest.raises(ConfigError, match="missing.key"):
            g.get_int("missing.key")
        for getter, key in ((g.get_int, "t.str"), (g.get_int, "t.bool_true"), (g.get_int, "t.f32"),
                            (g.get_float, "t.str"), (g.get_str, "t.u8"), (g.get_bool, "t.u8"),
                            (g.get_array, "t.str"), (g.get_str, "a.str")):
            with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                getter(key)
        with pytest.raises(ConfigError, match="a.str"):
            g.get_array("a.str", element_type=GGUFValueType.INT32)


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + payload


def test_empty_arrays(tmp_path):
    # GGUFWriter refuses empty arrays, so build this one by hand
    kvs = [
        _kv("e.ints", 9, struct.pack("<IQ", 5, 0)),
        _kv("e.strs", 9, struct.pack("<IQ", 8, 0)),
        _kv("e.nested", 9, struct.pack("<IQ", 9, 2) + struct.pack("<IQ", 0, 0) + struct.pack("<IQ", 8, 1)
            + struct.pack("<Q", 1) + b"x"),
    ]
    raw = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)
    path = tmp_path / "empty.gguf"
    path.write_bytes(raw)
    g = GGUFFile(raw)
    assert g.metadata["e.ints"].shape == (0,) and g.metadata["e.ints"].dtype == np.int32
    assert g.metadata["e.strs"] == []
    assert g.metadata["e.nested"][0].shape == (0,) and g.metadata["e.nested"][1] == ["x"]
    assert g.tensors == {} and g.data_offset == -(-len(raw) // 32) * 32
    r = gguf_reader(path)
    assert [f for f in r.fields if not f.startswith("GGUF.")] == list(g.metadata)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelNotFoundError):
        GGUFFile(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError):
        GGUFFile(tmp_path)


# -- real files -----------------------------------------------------------------------------------

# GGUFReader takes ~10 s per 100k-token vocabulary: the big ones beyond these two are left to the
# tokenizer tests, which read every file with realm's reader.
_BIG_CHECKED = {"ggml-vocab-llama-bpe.gguf", "ggml-vocab-qwen2.gguf"}


def _vocab_files():
    from conftest import vocab_dir

    d = vocab_dir()
    files = sorted(d.glob("*.gguf")) if d else []
    return [p for p in files if p.stat().st_size <= 2_500_000 or p.name in _BIG_CHECKED]


def _vocab_param(path: Path):
    big = path.stat().st_size > 2_000_000  # the 128k/151k-token BPE vocabs: GGUFReader takes ~10 s each
    return pytest.param(path, id=path.name, marks=[pytest.mark.slow] if big else [])


@pytest.mark.parametrize("path", [_vocab_param(p) for p in _vocab_files()])
def test_vocab_files_match_reader(vocab, path):
    with GGUFFile(path) as ours:
        assert_same_as_reader(ours, gguf_reader(path))
        assert ours.tensors == {}
        assert isinstance(ours.metadata["tokenizer.ggml.tokens"], list)


def test_vocab_folder_nonempty(vocab):
    assert list(vocab.glob("*.gguf")), "vocab fixture folder has no GGUF files"


@pytest.mark.slow
def test_default_model_matches_reader(default_model):
    """The whole default model against GGUFReader (which takes ~20-40 s on it here)."""
    with GGUFFile(default_model) as ours:
        assert_same_as_reader(ours, gguf_reader(default_model))
        assert len(ours.metadata["tokenizer.ggml.tokens"]) == 262144
        assert ours.metadata["general.architecture"] == "gemma3"
        assert {t.ggml_type for t in ours.tensors.values()} <= {
            GGMLType.F32, GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q6_K}
        last = max(ours.tensors.values(), key=lambda t: t.offset)
        assert last.offset + last.n_bytes <= ours.file_size


# -- realm.info ---------------------------------------------------------------------------------------

def test_info_summary_of_synthetic_model(synthetic):
    import json

    from realm.info import format_summary, summarize

    reader = gguf_reader(synthetic)
    with GGUFFile(synthetic) as g:
        s = summarize(g)
    json.dumps(s)  # plain data
    assert s["path"] == str(synthetic) and s["file_size"] == synthetic.stat().st_size and s["version"] == 3
    assert s["architecture"] == "llama" and s["name"] is None
    assert s["n_parameters"] == sum(int(t.n_elements) for t in reader.tensors)
    expected: dict[str, dict[str, int]] = {}
    for t in reader.tensors:
        q = expected.setdefault(gguf.GGMLQuantizationType(int(t.tensor_type)).name, {"tensors": 0, "bytes": 0})
        q["tensors"] += 1
        q["bytes"] += int(t.n_bytes)
    assert s["quantization"] == expected
    assert [t["name"] for t in s["tensors"]] == [t.name for t in reader.tensors]
    assert s["tensors"][-1] == {"name": "blk.0.attn_q.weight", "type": "Q4_K", "shape": [256, 256], "n_bytes": 256 * 144}
    for key in ("context_length", "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "tokenizer"):
        assert s[key] is None, key
    text = format_summary(s, show_tensors=True)
    assert "blk.0.attn_q.weight" in text and "Q4_K" in text and "256x256" in text
    lines = text.splitlines()
    value_columns = {line.index("llama") for line in lines if line.startswith("architecture")}
    assert value_columns == {len("feed-forward length") + 2}
    assert "blk.0.attn_q.weight" not in format_summary(s, show_tensors=False)


def test_info_summary_of_vocab_file(vocab):
    from realm.info import format_summary, summarize

    path = vocab / "ggml-vocab-llama-spm.gguf"
    with GGUFFile(path) as g:
        s = summarize(g)
    assert s["architecture"] == "llama" and s["tokenizer"] == "llama"
    assert s["vocab_size"] == 32000 and s["n_layers"] == 32 and s["dim"] == 4096
    assert s["n_parameters"] == 0 and s["tensors"] == [] and s["quantization"] == {}
    assert "vocab size" in format_summary(s, show_tensors=True)


def test_info_summary_of_incomplete_file():
    from realm.info import format_summary, summarize

    kvs = [_kv("general.architecture", 8, struct.pack("<Q", 5) + b"llama"),
           _kv("llama.block_count", 8, struct.pack("<Q", 2) + b"12"),  # wrong type: a string
           _kv("llama.attention.head_count", 9, struct.pack("<IQ", 4, 3) + struct.pack("<3I", 8, 8, 8)),
           _kv("llama.attention.head_count_kv", 9, struct.pack("<IQ", 4, 2) + struct.pack("<2I", 2, 4))]
    raw = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)
    s = summarize(GGUFFile(raw))
    assert s["path"] is None and s["architecture"] == "llama"
    assert s["n_layers"] is None and s["n_heads"] == 8 and s["n_kv_heads"] == [2, 4]
    assert s["context_length"] is None and s["vocab_size"] is None and s["tokenizer"] is None
    text = format_summary(s, show_tensors=True)
    assert "<in-memory image>" in text and "2,4" in text
