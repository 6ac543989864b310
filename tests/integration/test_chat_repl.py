"""`python -m realm chat` driven through a pseudo-terminal, as a user types into it.

The model is `chat_synth`'s instruct-style synthetic llama: after the generation prompt it answers
" hello world" and then `<|im_end|>`, so a reply's text and its end are the model's, not ours.
"""

from __future__ import annotations

import signal
import sys

import pytest

pexpect = pytest.importorskip("pexpect")

from chat_synth import make_chat_model  # noqa: E402
from synth import make_model  # noqa: E402

TIMEOUT = 60  # seconds any one expected line may take (the reference engine on a 1-layer model)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return make_chat_model(tmp_path_factory.mktemp("repl") / "chat.gguf", context_length=4096)


def _sigint_default():
    """In the child before exec: a terminal user's Ctrl-C. (A CI job started in the background has
    SIGINT ignored, which children inherit, and a program started so is meant to ignore Ctrl-C.)"""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(*args):
    child = pexpect.spawn(sys.executable, ["-m", "realm", "chat", *map(str, args)], encoding="utf-8",
                          timeout=TIMEOUT, dimensions=(24, 200), preexec_fn=_sigint_default)
    child.expect("realm chat: .*Ctrl-C stops a reply")
    return child


def finish(child):
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def test_turns_keep_the_cache_and_reset_starts_over(chat_model):
    child = spawn("--model", chat_model, "--engine", "reference", "-v")
    try:
        child.expect_exact("> ")
        child.sendline("hi there")
        child.expect(r"hello world\r?\n")
        child.expect(r"\[prompt (\d+) new token\(s\), (\d+) reused from the cache; reply (\d+) token\(s\)")
        first_new, first_reused = int(child.match.group(1)), int(child.match.group(2))
        assert first_reused == 0 and first_new > 0
        child.expect(r"stop eos; context (\d+)\]")
        context = int(child.match.group(1))

        child.sendline("and again")
        child.expect(r"hello world\r?\n")
        child.expect(r"\[prompt (\d+) new token\(s\), (\d+) reused from the cache")
        # the second turn evaluates only what follows the first: the whole first exchange is reused
        assert int(child.match.group(2)) == context

        child.sendline("/reset")
        child.expect_exact("(conversation reset)")
        child.sendline("hi there")
        child.expect(r"\[prompt (\d+) new token\(s\), (\d+) reused from the cache")
        assert (int(child.match.group(1)), int(child.match.group(2))) == (first_new, 0)

        child.sendline("/nonsense")
        child.expect("unknown command /nonsense")
        finish(child)
    finally:
        child.close(force=True)


def test_ctrl_c_stops_a_reply_not_the_session(tmp_path):
    # A random base model under the ChatML built-in: its vocabulary has no <|im_end|>, so the reply
    # runs on to the token limit and Ctrl-C has a long reply to stop.
    path = make_model(tmp_path / "base.gguf", context_length=4096)
    child = spawn("--model", path, "--engine", "reference", "--chat-template", "chatml",
                  "-n", "3500", "--ctx", "4096", "-v")
    try:
        child.expect_exact("> ")
        child.sendline("talk")
        child.expect(r"\S{8}")  # the reply has started
        child.sendintr()
        child.expect(r"reply (\d+) token\(s\), [0-9.]+ tok/s, stop (\w+)")
        assert child.match.group(2) == "cancelled"
        assert int(child.match.group(1)) < 3500
        # a Ctrl-C at the prompt says how to quit and keeps the session
        child.expect_exact("> ")
        child.sendintr()
        child.expect_exact("(Ctrl-D or /exit quits)")
        child.sendline("/reset")
        child.expect_exact("(conversation reset)")
        finish(child)
    finally:
        child.close(force=True)


def test_a_missing_template_is_one_clear_error(tmp_path):
    path = make_chat_model(tmp_path / "plain.gguf", chat_template=None)
    child = pexpect.spawn(sys.executable, ["-m", "realm", "chat", "--model", str(path), "--engine", "reference"],
                          encoding="utf-8", timeout=TIMEOUT)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus != 0
    assert "chat template" in child.before and "Traceback" not in child.before
