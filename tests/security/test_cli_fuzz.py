"""Hostile command lines: every bad argument is a usage error (exit 2) or one error line (exit 1)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realm.cli import main

NUMERIC_OPTIONS = ["-n", "--temperature", "--top-k", "--top-p", "--min-p", "--repeat-penalty", "--repeat-last-n",
                   "--seed", "--ctx", "--threads", "--memory-budget"]


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=True)


def assert_clean_failure(result, allowed=(1, 2)):
    assert result.exit_code in allowed, (result.exit_code, result.output, result.exception)
    # SystemExit is how click and our handler exit; any other exception escaped the CLI
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(NUMERIC_OPTIONS),
       value=st.one_of(st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=True).map(str),
                       st.sampled_from(["", "nan", "inf", "-inf", "1e999", "0x10", "ten", "64Q", "-64M", "1,2"])))
def test_numeric_options_never_crash(option, value):
    # --model pointing nowhere: if the value is accepted, the run still stops at the missing model
    result = invoke("run", "--model", "/nonexistent/realm-fuzz.gguf", option, value)
    assert_clean_failure(result)


@pytest.mark.parametrize("path_kind", ["missing", "directory", "empty", "text", "truncated_gguf", "fifo_like_name"])
def test_bad_model_paths(tmp_path, path_kind):
    p = tmp_path / "m.gguf"
    if path_kind == "directory":
        p.mkdir()
    elif path_kind == "empty":
        p.write_bytes(b"")
    elif path_kind == "text":
        p.write_text("hello, I am not a model\n" * 10)
    elif path_kind == "truncated_gguf":
        p.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 7)
    elif path_kind == "fifo_like_name":
        p = tmp_path / "bad\nname.gguf"
    for cmd in ("run", "info"):
        args = [cmd, "--model", str(p)] if cmd == "run" else [cmd, str(p)]
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        assert "realm: error:" in result.output


def test_empty_prompt_from_stdin():
    result = invoke("run", "-", "--model", "/nonexistent.gguf", input="")
    assert result.exit_code == 1 and "empty" in result.output


def test_prompt_longer_than_context(default_model):
    result = invoke("run", "--engine", "numba", "--ctx", "16", "word " * 200)
    assert result.exit_code == 1, result.output
    assert "context" in result.output


def test_ctx_beyond_trained_context(default_model):
    result = invoke("run", "--engine", "numba", "--ctx", "1000000")
    assert result.exit_code == 1 and "context length" in result.output
