"""llama.cpp's chat-template expectations, read out of its `tests/test-chat-template.cpp` at test time.

The file (fetched test data, never retyped here) holds the standard `conversation` and a list of
`TestCase { name, template_str, expected_output, expected_output_jinja, bos_token, eos_token,
supported_with_jinja, extra_conversation }` initializers; this is a small tokenizer for the C++
subset they use (string literals with escapes, U8C(...), adjacent literals, comments, braces).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_TOKEN = re.compile(r"""
    (?P<ws>\s+) | (?P<line>//[^\n]*) | (?P<block>/\*.*?\*/)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<ident>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<punct>[{}(),;=])
""", re.VERBOSE | re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0", "?": "?"}


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        n = body[i + 1]
        if n == "x":
            m = re.match(r"[0-9a-fA-F]+", body[i + 2:])
            out.append(chr(int(m.group(0), 16)))
            i += 2 + len(m.group(0))
        elif n in _ESCAPES:
            out.append(_ESCAPES[n])
            i += 2
        else:
            raise ValueError(f"unknown escape \\{n}")
    return "".join(out)


def _tokens(src: str) -> list[tuple[str, str]]:
    """Tokens of the brace-delimited initializer `src` starts with (up to its closing brace)."""
    out, pos, depth = [], 0, 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None:
            raise ValueError(f"unexpected C++ at offset {pos}: {src[pos:pos + 40]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind in ("ws", "line", "block"):
            continue
        text = m.group(kind)
        if kind == "punct" and text in "{}":
            depth += 1 if text == "{" else -1
        if kind == "str":
            text = _unescape(text[1:-1])
            if out and out[-1][0] == "str":  # adjacent literals concatenate
                out[-1] = ("str", out[-1][1] + text)
                continue
        out.append((kind, text))
        if depth == 0:
            break
    return out


def _value(toks: list[tuple[str, str]], i: int):
    """Parse one initializer value at toks[i] -> (python value, next index)."""
    kind, text = toks[i]
    if kind == "str":
        return text, i + 1
    if kind == "ident" and text == "U8C":
        assert toks[i + 1] == ("punct", "(") and toks[i + 3] == ("punct", ")"), toks[i:i + 4]
        return toks[i + 2][1], i + 4
    if kind == "ident" and text in ("true", "false"):
        return text == "true", i + 1
    if (kind, text) == ("punct", "{"):
        items, i = [], i + 1
        while toks[i] != ("punct", "}"):
            v, i = _value(toks, i)
            items.append(v)
            if toks[i] == ("punct", ","):
                i += 1
        return items, i + 1
    raise ValueError(f"unexpected token {toks[i]}")


def _initializer(src: str, marker: str):
    start = src.index(marker) + len(marker)
    brace = src.index("{", start)
    toks = _tokens(src[brace:])
    value, _ = _value(toks, 0)
    return value


@dataclass
class Case:
    name: str
    template: str
    expected: str  # llama.cpp's built-in formatter (llm_chat_apply_template)
    expected_jinja: str  # llama.cpp's Jinja engine (the same as `expected` when the file leaves it empty)
    bos_token: str = ""
    eos_token: str = ""
    supported_with_jinja: bool = True
    extra: list[tuple[str, str]] = field(default_factory=list)


def load(cpp: Path) -> tuple[list[dict[str, str]], list[Case]]:
    """(the standard conversation as messages, the test cases) of test-chat-template.cpp."""
    src = Path(cpp).read_text(encoding="utf-8")
    body = src[src.index("int main_automated_tests"):]
    conversation = [{"role": r, "content": c} for r, c in _initializer(body, "conversation")]
    cases = []
    for fields in _initializer(body, "std::vector<TestCase> test_cases"):
        name, template, expected, expected_jinja, *rest = fields
        bos, eos, supported, extra = (rest + ["", "", True, []][len(rest):])[:4]
        cases.append(Case(name, template, expected, expected_jinja or expected, bos, eos, supported,
                          [tuple(e) for e in extra]))
    return conversation, cases
