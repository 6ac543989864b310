"""End to end through `python -m realm`: the Paris answer from both engines, info, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def realm(*args: str, stdin: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "realm", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_no_source_file_contains_the_answer():
    """'Paris' may only come from the model: no library or guest source may contain the word."""
    offenders = []
    for folder in ("realm", "guest_rs/src"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".rs", ".wat", ".json", ".txt"):
                if "paris" in path.read_text(errors="replace").lower():
                    offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"sources mention the expected answer: {offenders}"


@pytest.mark.parametrize("engine", ["numba", "wasm"])
def test_run_answers_paris(default_model, engine):
    r = realm("run", "--engine", engine, "--json", "-n", "24")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "Paris" in out["text"], out["text"]
    assert out["stats"]["prompt_tokens"] == 8
    assert out["tokens"] and all(isinstance(t, int) for t in out["tokens"])
    if engine == "wasm":  # the guest's linear memory, as wasmtime reports it, never passed the 64 MiB default
        guest = out["stats"]["engine"]
        assert guest["memory_budget"] == 64 << 20
        assert 0 < guest["peak_memory"] <= 64 << 20 and guest["memory_size"] <= 64 << 20


def test_run_streams_text_and_verbose_timings(default_model):
    r = realm("run", "--engine", "numba", "-n", "24", "--verbose")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "eval rate" in r.stderr and "prompt eval count" in r.stderr


def test_run_prompt_from_stdin_and_stop_string(default_model):
    r = realm("run", "-", "--engine", "numba", "-n", "24", "--json", "--stop", "Paris",
              stdin="What is the capital of France?")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "Paris" not in out["text"]
    assert out["stats"]["stop_reason"] == "stop_string"


def test_info_default_model_json(default_model):
    r = realm("info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    text = json.dumps(info)
    assert "gemma3" in text and "262144" in text


def test_info_vocab_only_file(vocab):
    r = realm("info", str(vocab / "ggml-vocab-llama-spm.gguf"))
    assert r.returncode == 0, r.stderr
    assert "llama" in r.stdout


@pytest.mark.parametrize("content", [b"", b"not a gguf file at all", b"GGUF\x03\x00\x00\x00\xff\xff"])
def test_malformed_file_is_one_clear_line(tmp_path, content):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    for args in (["info", str(bad)], ["run", "--model", str(bad), "-n", "1"]):
        r = realm(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("realm: error:"), r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [
    ["run", "--model", "/nonexistent/model.gguf"],
    ["run", "--model", "."],
    ["info", "/nonexistent/model.gguf"],
])
def test_bad_paths(args):
    r = realm(*args)
    assert r.returncode == 1 and r.stderr.startswith("realm: error:"), r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [
    ["run", "-n", "-1"],
    ["run", "--temperature", "-0.5"],
    ["run", "--top-p", "0"],
    ["run", "--ctx", "0"],
    ["run", "--threads", "0"],
    ["run", "--memory-budget", "lots"],
    ["run", "--memory-budget", "99999G"],
    ["run", "--engine", "gpu"],
    ["run", "--seed", str(2**64)],
])
def test_bad_arguments_exit_2_with_usage_error(args):
    r = realm(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Error" in r.stderr
