"""The Node host and the Python host run the same guest: on the same prompts they must produce the same
greedy tokens, each through its own tokenizer (Node: the Rust meta module; Python: realm.tokenizer) —
the default model on a few prompts and a synthetic llama model. The Node run's peak guest memory must
stay within the 64 MiB budget."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from test_js_node import JS, node_or_skip

BUDGET = 64 << 20
N_TOKENS = 16
DEFAULT_PROMPTS = (
    ("paris", "What is the capital of France?", False),
    ("chat", "<start_of_turn>user\nName three rivers of Europe.<end_of_turn>\n<start_of_turn>model\n", True),
    ("long", "The history of the city of Lyon begins with the Roman colony of Lugdunum, founded in 43 BC. "
             "Over the centuries the city grew into a centre of silk weaving, printing and banking, and", False),
)


@pytest.fixture(scope="module")
def node() -> str:
    return node_or_skip()


def node_run(node: str, model: Path, prompt: str, special: bool, n: int = N_TOKENS) -> dict:
    cmd = [node, str(JS / "bin" / "realm.mjs"), "run", prompt, "--model", str(model), "-n", str(n), "--json",
           "--memory-budget", str(BUDGET)]  # a PROMPT given: no default-prompt stop
    if special:
        cmd.append("--special")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"node host failed ({r.returncode}): {r.stderr.strip()}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def python_run(model_path: Path, prompt: str, special: bool, n: int = N_TOKENS) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy tokens) of the Python host's wasm engine, one guest instance at the same budget."""
    import realm

    with realm.load(model_path) as model:
        gen = model.generate(prompt, engine="wasm", max_tokens=n, special=special, threads=1, memory_budget=BUDGET)
        for _ in gen:
            pass
        return model.tokenize(prompt, add_bos=True, special=special), list(gen.tokens)


@pytest.mark.parametrize("name,prompt,special", DEFAULT_PROMPTS, ids=[p[0] for p in DEFAULT_PROMPTS])
def test_default_model_same_greedy_tokens(node, default_model, name, prompt, special):
    js = node_run(node, default_model, prompt, special)
    py_prompt, py_tokens = python_run(default_model, prompt, special)
    assert js["prompt_ids"] == py_prompt, "the two hosts tokenized the prompt differently"
    assert js["tokens"] == py_tokens, f"greedy tokens differ: node {js['tokens']} vs python {py_tokens}"
    assert py_tokens, "no tokens generated"
    assert 0 < js["stats"]["peak_memory"] <= BUDGET, js["stats"]
    if name == "paris":
        assert "Paris" in js["text"], js["text"]


def test_synthetic_llama_same_greedy_tokens(node, tmp_path):
    from synth import differential_kwargs, make_model

    from realm.quants import GGMLType

    model = make_model(tmp_path / "llama-q4k.gguf", arch="llama", qtype=GGMLType.Q4_K, seed=3,
                       **differential_kwargs("llama", GGMLType.Q4_K))
    prompt = "hello world the"
    js = node_run(node, model, prompt, False, n=12)
    py_prompt, py_tokens = python_run(model, prompt, False, n=12)
    assert js["prompt_ids"] == py_prompt
    assert js["tokens"] == py_tokens, f"greedy tokens differ: node {js['tokens']} vs python {py_tokens}"
    assert len(py_tokens) == 12  # the tiny vocabulary's EOS is never the argmax of this seed
