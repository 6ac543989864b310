"""The metadata module's tokenizer and dequantizer (realm_meta.wasm, Rust) against llama.cpp's vectors and the Python
oracle `realm.tokenizer`: every vocabulary with vectors, the default model, generated text, every
pre-tokenizer family, detokenize/stream decode, stop ids, and hostile inputs (clean codes, no trap)."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from realm.errors import GuestError, RealmError, TokenizerError, UnsupportedError
from realm.gguf import GGUFFile
from realm.host.abi import Err
from realm.host.meta import MetaModule, default_meta_path
from realm.tokenizer import PRE_VALUES, StreamDecoder, Tokenizer

import vocab_vectors as vv  # noqa: E402  (tests/ is on sys.path)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not default_meta_path().is_file(), reason="realm_meta.wasm not built")


@functools.cache
def meta(path: Path) -> MetaModule:
    m = MetaModule(path)
    m.init_tokenizer()
    return m


@pytest.fixture(scope="module")
def pair(vocab):
    """name -> (MetaModule, Python Tokenizer) of ggml-vocab-<name>.gguf."""
    return lambda name: (meta(vocab / f"ggml-vocab-{name}.gguf"), vv.load(vocab, name))


def test_tables_are_generated():
    """tables.rs is exactly what gen_tables.py makes of the Python tokenizer's tables."""
    out = subprocess.run([sys.executable, str(ROOT / "guest_rs/meta/gen_tables.py")], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert out == (ROOT / "guest_rs/meta/src/tables.rs").read_text(encoding="utf-8")


# -- llama.cpp's vectors ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", vv.WITH_VECTORS)
def test_vectors_reproduced_exactly(vocab, pair, name):
    m, t = pair(name)
    cases = vv.read_vectors(vocab, name)
    assert len(cases) > 40
    bad = [(text, want, got) for text, want in cases if (got := m.tokenize(text, add_bos=False)) != want]
    assert not bad, f"{name}: {len(bad)}/{len(cases)} mismatches, first: {bad[0]!r}"
    # with BOS, special-token parsing, decode and streaming: the same as the Python tokenizer
    for text, ids in cases:
        assert m.tokenize(text) == t.encode(text), text
        assert m.tokenize(text, special=True) == t.encode(text, special=True), text
        for special in (False, True):
            assert m.detokenize(ids, special) == t.decode(ids, special), text
        sd, ms = StreamDecoder(t, lstrip_first=True), m.stream(lstrip_first=True)
        assert [ms.feed(i) for i in ids] + [ms.flush()] == [sd.feed(i) for i in ids] + [sd.flush()], text


@pytest.mark.parametrize("name", vv.WITH_VECTORS + vv.WITHOUT_VECTORS)
def test_vocabulary_facts(vocab, pair, name):
    path = vocab / f"ggml-vocab-{name}.gguf"
    with GGUFFile(path) as g:
        try:
            Tokenizer.from_gguf(g)
        except UnsupportedError as e:  # nomic-bert-moe is a UGM (T5) vocabulary: refused the same way
            with pytest.raises(UnsupportedError) as got:
                MetaModule(path).init_tokenizer()
            assert str(got.value) == str(e)
            return
    m, t = pair(name)
    assert m.vocab_size == t.vocab_size
    assert m.stop_ids == t.stop_ids
    ids = list(range(0, t.vocab_size, max(1, t.vocab_size // 3000)))
    assert m.detokenize(ids, special=True) == t.decode(ids, special=True)
    assert m.detokenize(ids, remove_special=True) == t.decode(ids, remove_special=True)


# -- the default model ---------------------------------------------------------------------------------

DEFAULT_TEXTS = [
    "The capital of France is", " leading space", "<start_of_turn>user\nHi<end_of_turn>\n", "emoji 🦙🦙 and ünïcödé",
    "tabs\tand\n\nnewlines   ", "数学 日本語 한국어", "x" * 3000, "  ", "",
]


def test_default_model(default_model):
    import time

    t0 = time.perf_counter()
    m = MetaModule(default_model)
    m.init_tokenizer()
    init_s = time.perf_counter() - t0
    with GGUFFile(default_model) as g:
        t = Tokenizer.from_gguf(g)
    assert m.vocab_size == t.vocab_size == 262144
    assert m.stop_ids == t.stop_ids
    for text in DEFAULT_TEXTS:
        for add_bos in (False, True):
            for special in (False, True):
                assert m.tokenize(text, add_bos, special) == t.encode(text, add_bos, special), text
        ids = t.encode(text, special=True)
        for special in (False, True):
            assert m.detokenize(ids, special) == t.decode(ids, special)
        sd, ms = StreamDecoder(t), m.stream()
        assert [ms.feed(i) for i in ids] + [ms.flush()] == [sd.feed(i) for i in ids] + [sd.flush()]
    # every special token of the vocabulary in one text, between words: the same partition
    specials = [t.token_text(i) for i in range(t.vocab_size) if t.is_control(i) or t.token_type(i) in (2, 4)]
    text = " x ".join(specials[::3]) + "".join(specials[1::3])
    for special in (False, True):
        assert m.tokenize(text, special=special) == t.encode(text, special=special)
    assert m.memory_size <= 64 << 20, m.memory_size  # far inside the module's 256 MiB cap
    print(f"default model tokenizer: init {init_s:.2f}s, module memory {m.memory_size >> 20} MiB")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_default_model_generated_text(default_model, text):
    m = meta(default_model)
    t = _python_tok(default_model)
    assert m.tokenize(text, special=True) == t.encode(text, special=True)
    ids = t.encode(text)
    assert m.detokenize(ids) == t.decode(ids)


@functools.cache
def _python_tok(path: Path) -> Tokenizer:
    with GGUFFile(path) as g:
        return Tokenizer.from_gguf(g)


_TEXT = st.text(st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from(list(" \n\t'0123456789aA.,!?"))),
                max_size=40)


@pytest.mark.parametrize("name", ["llama-bpe", "gpt-2", "qwen35", "deepseek-llm", "bert-bge", "gemma-4", "phi-3"])
def test_generated_text(vocab, pair, name):
    m, t = pair(name)

    @settings(max_examples=40, deadline=None, database=None)
    @given(text=_TEXT)
    def check(text):
        assert m.tokenize(text, special=True) == t.encode(text, special=True)
        ids = t.encode(text, add_bos=False)
        assert m.detokenize(ids) == t.decode(ids)
        sd, ms = StreamDecoder(t), m.stream()
        assert "".join(ms.feed(i) for i in ids) + ms.flush() == "".join(sd.feed(i) for i in ids) + sd.flush()

    check()


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 31999), max_size=12))
def test_byte_tokens_decode_and_stream(vocab, ids):
    """Random ids (byte-fallback tokens give invalid UTF-8): the same U+FFFD placement, and the
    stream never emits half a character."""
    m = meta(vocab / "ggml-vocab-llama-spm.gguf")
    t = vv.load(vocab, "llama-spm")
    ids = [i % 300 if k % 2 else i for k, i in enumerate(ids)]  # many byte tokens (ids 3..258)
    assert m.detokenize(ids, special=True) == t.decode(ids, special=True)
    sd, ms = StreamDecoder(t, special=True), m.stream(special=True)
    assert [ms.feed(i) for i in ids] + [ms.flush()] == [sd.feed(i) for i in ids] + [sd.flush()]


# -- every pre-tokenizer family --------------------------------------------------------------------------

FAMILY_TEXTS = [
    "Hello world, it's 2024-12-03: 1234567 apples & 89 pears!\n\n  indented\ttab  ",
    "I'M SHOUTING, you're whispering; they'll've done it. CamelCaseWord and snake_case_word",
    "数学 日本語のテキスト 한국어 текст Ελληνικά עברית العربية हिन्दी ไทย",
    "  \n\r\n \u3000 x\u00a0y \u2028 z 1\u0663\u0664 \u00b2\u00bd é̀ a\u0301 🦙👍🏽",
    "<sentinel:12> IMGIMGABCZ x.y,z!?…。，、 $+<=>^~|`",
]

# pieces that exercise the regexes' classes and alternatives (random strings of them per family)
FUZZ_ALPHABET = list(" \n\r\t'0123456789aAbBzZ.,!?$+<=>^~|`-_/\\()[]{}\"#%&*:;@") + [
    "\u00a0", "\u3000", "é", "ß", "Ω", "ж", "数", "学", "日", "ア", "한", "\u0301", "\u0663", "²", "½", "🦙",
    "\u2028", "…", "。", "，", "\u200b", "ǅ", "ʰ", "ⅷ", "\x00", "\x0b", "IMGIMG", "Z", "<sentinel:", ">", "    ",
    "'s", "'LL", "1234"]


def _bpe_vocab_gguf(path: Path, pre: str, md) -> Path:
    """A BPE vocabulary over llama.cpp's gpt-2 tokens/merges (metadata `md`) with `tokenizer.ggml.pre` = pre."""
    import gguf

    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(list(md["tokenizer.ggml.tokens"]))
    w.add_token_types([int(x) for x in md["tokenizer.ggml.token_type"]])
    w.add_token_merges(list(md["tokenizer.ggml.merges"]))
    w.add_bos_token_id(int(md["tokenizer.ggml.bos_token_id"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_every_pre_tokenizer_value(tmp_path, vocab):
    """One `tokenizer.ggml.pre` value of every (family, flags) combination llama.cpp maps: the same
    ids and text as the Python oracle (the file written once, its pre value spliced per case)."""
    import struct

    import random

    rng = random.Random(12)
    combos: dict = {}
    for pre, (family, flags) in PRE_VALUES.items():
        combos.setdefault((family, tuple(sorted(flags.items()))), pre)
    with GGUFFile(vocab / "ggml-vocab-gpt-2.gguf") as src:
        md = dict(src.metadata)
    base_path = _bpe_vocab_gguf(tmp_path / "base.gguf", "default", md)
    base = base_path.read_bytes()
    with GGUFFile(base_path) as g:
        md = dict(g.metadata)  # what the spliced files hold, but for the pre value
    key = b"tokenizer.ggml.pre"
    at = base.index(struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, 7) + b"default")
    head, tail = base[:at + 8 + len(key) + 4], base[at + 8 + len(key) + 4 + 8 + 7:]
    path = tmp_path / "v.gguf"
    for (family, _), pre in combos.items():
        value = pre.encode()
        path.write_bytes(head + struct.pack("<Q", len(value)) + value + tail)
        m = MetaModule(path)
        t = Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": pre})
        assert m.get_string("tokenizer.ggml.pre") == pre
        for text in FAMILY_TEXTS + ["".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(1, 40)))
                                    for _ in range(25)]:
            assert m.tokenize(text) == t.encode(text), (pre, family, text)
            ids = t.encode(text, add_bos=False)
            assert m.detokenize(ids) == t.decode(ids), (pre, text)
        m.close()


# -- refusals and hostile input --------------------------------------------------------------------------

def _vocab_gguf(path: Path, model: str, pre: str | None = None, extra=None, tokens=None, scores=True) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    if tokens is None:
        w.add_token_list(["<unk>", "<s>", "</s>", "a", "b", "ab"])
    if scores:
        w.add_token_scores([0.0, 0.0, 0.0, -1.0, -1.0, -0.5])
    for key, value in (extra or {}).items():
        w.add_key_value(key, *value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("model,pre,extra,error", [
    ("t5", None, None, UnsupportedError),
    ("rwkv", None, None, UnsupportedError),
    ("mystery", None, None, UnsupportedError),
    ("gpt2", "no-such-pre", None, UnsupportedError),
    ("gpt2", "llama-bpe", None, TokenizerError),  # no merges
    ("llama", None, {"tokenizer.ggml.bos_token_id": (99, "UINT32")}, TokenizerError),
    ("llama", None, {"tokenizer.ggml.add_bos_token": ("yes", "STRING")}, TokenizerError),
])
def test_refusals_match_python(tmp_path, model, pre, extra, error):
    import gguf

    extra = {k: (v, getattr(gguf.GGUFValueType, t)) for k, (v, t) in (extra or {}).items()}
    _check_refusal(_vocab_gguf(tmp_path / "v.gguf", model, pre, extra), error)


def _check_refusal(path: Path, error) -> None:
    with GGUFFile(path) as g:
        with pytest.raises(error) as want:
            Tokenizer.from_gguf(g)
    m = MetaModule(path)
    with pytest.raises(error) as got:
        m.init_tokenizer()
    assert str(got.value) == str(want.value)


def test_t5_names_ugm(tmp_path):
    m = MetaModule(_vocab_gguf(tmp_path / "v.gguf", "t5"))
    with pytest.raises(UnsupportedError, match=r"'t5' \(UGM \(T5 unigram\)\)"):
        m.init_tokenizer()


def _arr(values, et):
    import gguf

    return (values, gguf.GGUFValueType.ARRAY, getattr(gguf.GGUFValueType, et))


@pytest.mark.parametrize("case", [
    "scores_short", "types_float", "types_huge", "scores_strings", "tokens_numeric", "tokens_string",
    "tokens_duplicate", "merges_numeric", "bos_string", "add_eos_without_eos", "model_int"])
def test_bad_vocab_metadata_same_message(tmp_path, case):
    import gguf

    VT = gguf.GGUFValueType
    extra, tokens, scores, model = {}, None, True, "llama"
    if case == "scores_short":
        extra["tokenizer.ggml.scores"], scores = _arr([0.0, 1.0], "FLOAT32"), False
    elif case == "types_float":
        extra["tokenizer.ggml.token_type"] = _arr([1.0] * 6, "FLOAT32")
    elif case == "types_huge":
        extra["tokenizer.ggml.token_type"] = _arr([1, 1, 1, 2**40, 1, 1], "INT64")
    elif case == "scores_strings":
        extra["tokenizer.ggml.scores"], scores = _arr(["a"] * 6, "STRING"), False
    elif case == "tokens_numeric":
        extra["tokenizer.ggml.tokens"], tokens = _arr([1, 2, 3], "INT32"), False
    elif case == "tokens_string":
        extra["tokenizer.ggml.tokens"], tokens = ("abc", VT.STRING), False
    elif case == "tokens_duplicate":
        extra["tokenizer.ggml.tokens"], tokens = _arr(["<unk>", "<s>", "</s>", "a", "b", "a"], "STRING"), False
    elif case == "merges_numeric":
        model = "gpt2"
        extra["tokenizer.ggml.pre"] = ("gpt-2", VT.STRING)
        extra["tokenizer.ggml.merges"] = _arr([1, 2], "INT32")
    elif case == "bos_string":
        extra["tokenizer.ggml.bos_token_id"] = ("1", VT.STRING)
    elif case == "add_eos_without_eos":
        extra["tokenizer.ggml.add_eos_token"] = (True, VT.BOOL)
        extra["tokenizer.ggml.eos_token_id"] = (99, VT.UINT32)
    path = _vocab_gguf(tmp_path / "v.gguf", model, None, {k: v for k, v in extra.items()}, tokens, scores)
    if case == "model_int":
        data = path.read_bytes().replace(b"tokenizer.ggml.model", b"tokenizer.ggml.mode_")
        path.write_bytes(data)
    with GGUFFile(path) as g:
        with pytest.raises((TokenizerError, UnsupportedError)) as want:
            Tokenizer.from_gguf(g)
    with pytest.raises(type(want.value)) as got:
        MetaModule(path).init_tokenizer()
    assert str(got.value) == str(want.value), case


def test_hostile_calls(vocab):
    m = meta(vocab / "ggml-vocab-llama-bpe.gguf")
    # a result longer than max_ids: ERR_TOO_SMALL with the size needed, nothing trapped
    text = "word " * 20000
    with pytest.raises(GuestError) as info:
        m.tokenize_bytes(text.encode(), max_ids=10)
    assert info.value.code == Err.ERR_TOO_SMALL
    assert m.call("meta_last_size") == 4 * len(m.tokenize(text))
    # invalid UTF-8, bad ids, bad flags, bad pointers
    for bad in (b"\xff", b"abc\xc3", b"\xed\xa0\x80", b"ok \xf4\x90\x80\x80"):
        with pytest.raises(TokenizerError, match="not valid UTF-8"):
            m.tokenize_bytes(bad)
    for ids in ([-1], [m.vocab_size], [5, 2**31 - 1]):
        with pytest.raises(TokenizerError, match="out of range"):
            m.detokenize(ids)
    with pytest.raises(TokenizerError, match="out of range"):
        m.stream().feed(-7)
    size = m.memory_size
    assert m.call("meta_tokenize", size - 2, 100, 1, 8, 8) == Err.ERR_BOUNDS
    assert m.call("meta_tokenize", 8, -1, 1, 8, 8) == Err.ERR_BOUNDS
    assert m.call("meta_tokenize", 8, 1, 1, 8, -1) == Err.ERR_BOUNDS
    assert m.call("meta_tokenize", 8, 0, 64, 8, 8) == Err.ERR_BAD_ARG
    assert m.call("meta_detokenize", 8, 1 << 30, 0, 8, 8) == Err.ERR_BAD_ARG
    assert m.call("meta_detokenize", size - 4, 4, 0, 8, 8) == Err.ERR_BOUNDS
    assert m.call("meta_stop_ids", 8, 0) == Err.ERR_TOO_SMALL
    assert m.call("meta_tokenize", 8, (8 << 20) + 1, 0, 8, 8) == Err.ERR_BAD_ARG
    # a stream step whose output does not fit is not committed: retrying gives the same text
    s = m.stream()
    ids = m.tokenize("hello world", add_bos=False)
    ptr = m._alloc(64)
    assert m.call("meta_stream_feed", ids[0], ptr, 0) == Err.ERR_TOO_SMALL
    assert s.feed(ids[0]) + s.feed(ids[1]) + s.flush() == "hello world"
    m._free(ptr, 64)
    # still usable
    assert m.detokenize(m.tokenize("still fine", add_bos=False)) == "still fine"


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=40), ids=st.lists(st.integers(-2**31, 2**31 - 1) | st.integers(0, 32100), max_size=8))
def test_hostile_bytes_and_ids(vocab, data, ids):
    """Arbitrary bytes: invalid UTF-8 is a TokenizerError, valid UTF-8 tokenizes as the Python
    tokenizer does; arbitrary ids: out of range is a TokenizerError, else Python's text."""
    m = meta(vocab / "ggml-vocab-llama-spm.gguf")
    t = vv.load(vocab, "llama-spm")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(TokenizerError, match="not valid UTF-8"):
            m.tokenize_bytes(data)
    else:
        assert m.tokenize_bytes(data, special=True) == t.encode(text, special=True)
    if all(0 <= i < t.vocab_size for i in ids):
        assert m.detokenize(ids, special=True) == t.decode(ids, special=True)
    else:
        with pytest.raises(TokenizerError):
            m.detokenize(ids)


def test_not_initialised_and_huge_text(vocab):
    m = MetaModule(vocab / "ggml-vocab-llama-spm.gguf")
    assert m.call("meta_vocab_size") == Err.ERR_NOT_INIT
    assert m.call("meta_stream_feed", 1, 8, 8) == Err.ERR_NOT_INIT
    m.init_tokenizer()
    assert m.call("meta_stream_flush", 8, 8) == Err.ERR_NOT_INIT  # no stream yet
    # 4 MiB of one letter: one SPM fragment of 4M symbols, within the memory cap or a clean ERR_OOM
    text = "a" * (4 << 20)
    try:
        ids = m.tokenize(text, add_bos=False)
        assert sum(len(m.detokenize([i])) for i in set(ids)) > 0
    except GuestError as e:
        assert e.code == Err.ERR_OOM
    assert m.detokenize(m.tokenize("still fine", add_bos=False)) == "still fine"


def test_tokenizer_needs_no_model_tensors(vocab):
    """A vocab-only file (no tensors, no config) still gives its tokenizer."""
    m = MetaModule(vocab / "ggml-vocab-qwen2.gguf")
    with pytest.raises(RealmError):
        m.config_bytes()
    m.init_tokenizer()
    assert m.tokenize("hi there", add_bos=False) == vv.load(vocab, "qwen2").encode("hi there", add_bos=False)


# -- dequantization ----------------------------------------------------------------------------------

def test_dequantize_matches_reference(default_model):
    """Every type the guest's kernels handle, on random blocks: bit for bit realm.quants' reference
    (NaN where it has NaN); the default model's own tensors too; bad calls give clean codes."""
    import numpy as np

    from realm.quants import GGMLType, block_size_and_bytes, dequantize_ref

    m = meta(default_model)
    rng = np.random.default_rng(7)
    for t in (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
              GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K,
              GGMLType.Q6_K):
        bs, ts = block_size_and_bytes(t)
        raw = rng.integers(0, 256, ts * 5, dtype=np.uint8).tobytes()
        with np.errstate(all="ignore"):  # random scales include inf/NaN
            want = dequantize_ref(raw, t)
        np.testing.assert_array_equal(m.dequantize(int(t), raw), want, err_msg=t.name)
    g = GGUFFile(default_model)
    with open(default_model, "rb") as f:
        for info in list(g.tensors.values())[:6]:
            f.seek(info.offset)
            raw = f.read(min(info.n_bytes, block_size_and_bytes(info.ggml_type)[1] * 64))
            np.testing.assert_array_equal(m.dequantize(int(info.ggml_type), raw),
                                          dequantize_ref(raw, info.ggml_type), err_msg=info.name)
    with pytest.raises(UnsupportedError):
        m.dequantize(int(GGMLType.IQ2_XXS), b"\0" * 66)
    with pytest.raises(GuestError) as e:
        m.dequantize(int(GGMLType.Q4_0), b"\0" * 17)
    assert e.value.code == Err.ERR_BAD_ARG
    assert m.call("meta_dequantize", 2, 8, 18, 8, 4) == Err.ERR_TOO_SMALL
    assert m.call("meta_last_size") == 128
    assert m.call("meta_dequantize", 99, 8, 18, 8, 4) == Err.ERR_UNSUPPORTED
    assert m.call("meta_dequantize", 2, m.memory_size - 4, 18, 8, 128) == Err.ERR_BOUNDS
