"""Test models for the JavaScript host's `node --test` suite, described by the Python oracle.

    python3 tests/js_fixtures.py OUT_DIR     (tests/integration/test_js_node.py does this in a temp folder)

writes `tiny-llama.gguf` (a synthetic llama model, tests/synth.py), `tiny-llama-foreign.gguf` (the
same bytes plus padding: other content, for "foreign id" cases) and `tiny-llama.json`: the tensor
table, the ModelConfigABI bytes and a few metadata strings exactly as realm.gguf / realm.config /
realm.host.abi produce them, the Python store's content id, gguf-py's dequantization of two tensors,
realm.tokenizer's ids and text for a few strings, plus greedy tokens of the Python wasm host for a
fixed prompt. The
node tests check the meta module's answers and the Node host's tokens against it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # realm from this checkout, installed or not

from synth import make_model  # noqa: E402

from realm.config import ModelConfig  # noqa: E402
from realm.gguf import GGUFFile  # noqa: E402
from realm.host import abi  # noqa: E402
from realm.host.store import content_id  # noqa: E402
from realm.quants import GGMLType  # noqa: E402

PROMPT_IDS = [1, 260, 300 - 5, 42, 7, 99]  # BOS and a few ids of the tiny vocabulary
GREEDY_STEPS = 8
DEQUANTIZED = ("output_norm.weight", "blk.0.attn_q.weight")  # an F32 and a Q8_0 tensor
TEXTS = ("What is the capital of France?", "hello world", " the  Paris\n\nof", "Zürich ☃ 日本", "<s>the</s>", "")
ROOT = Path(__file__).resolve().parents[1]
HOSTILE_TABLE = ROOT / "tests" / "data" / "abi_hostile_calls.json"


def describe(path: Path) -> dict:
    """What the Python host knows about a model file (the oracle for the JS meta double and meta.js)."""
    with GGUFFile(path) as g:
        tensors = [{"name": t.name, "ggml_type": int(t.ggml_type), "ne": [int(n) for n in t.ne],
                    "n_bytes": int(t.n_bytes), "data_offset": int(t.offset), "n_elements": int(t.n_elements)}
                   for t in g.tensors.values()]
        cfg = ModelConfig.from_gguf(g)
        strings = {k: g.metadata[k] for k in ("general.architecture", "general.name") if k in g.metadata}
    return {"tensors": tensors, "config_hex": abi.pack_model_config(cfg).hex(), "strings": strings,
            "size": path.stat().st_size, "python_id": str(content_id(hashlib.sha256(path.read_bytes()).digest())),
            "dequantized": dequantized(path, DEQUANTIZED), "tokenizer": tokenized(path, TEXTS)}


def tokenized(path: Path, texts: tuple[str, ...]) -> dict:
    """realm.tokenizer's answers (the oracle of the meta module's tokenizer as seen from JS)."""
    from realm.tokenizer import Tokenizer

    with GGUFFile(path) as g:
        tok = Tokenizer.from_gguf(g)
    out = []
    for text in texts:
        ids = tok.encode(text)
        out.append({"text": text, "ids": ids, "ids_no_bos": tok.encode(text, add_bos=False),
                    "ids_special": tok.encode(text, special=True), "decoded": tok.decode(ids)})
    return {"cases": out, "stop_ids": sorted(tok.stop_ids), "bos_id": tok.bos_id}


def dequantized(path: Path, names: tuple[str, ...]) -> dict[str, list[float]]:
    """gguf-py's NumPy dequantization of a few tensors (f32 values, row-major), the oracle of getTensor."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in reader.tensors}
    return {n: [float(x) for x in gguf.quants.dequantize(by_name[n].data, by_name[n].tensor_type).reshape(-1)]
            for n in names}


def python_greedy(path: Path, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy tokens of the Python wasm host (one instance) after `prompt_ids`."""
    import realm
    from realm.generate import greedy

    model = realm.load(path)
    try:
        eng = model.engine("wasm", threads=1)
        try:
            tokens, _ = greedy(eng, prompt_ids, n)
        finally:
            eng.close()
    finally:
        model.close()
    return tokens


def write_fixtures(out: Path, with_greedy: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = make_model(out / "tiny-llama.gguf", arch="llama", qtype=GGMLType.Q8_0, n_layers=1, dim=32,
                      hidden_dim=64, n_heads=2, n_kv_heads=1, head_dim=16, vocab_size=300, seed=7)
    foreign = out / "tiny-llama-foreign.gguf"
    shutil.copyfile(path, foreign)
    with foreign.open("ab") as f:
        f.write(bytes(64))
    info = describe(path)
    info["foreign_size"] = foreign.stat().st_size
    info["prompt_ids"] = PROMPT_IDS
    if with_greedy:
        info["python_greedy"] = python_greedy(path, PROMPT_IDS, GREEDY_STEPS)
    (out / "tiny-llama.json").write_text(json.dumps(info, indent=1))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 tests/js_fixtures.py OUT_DIR")
    write_fixtures(Path(sys.argv[1]))
