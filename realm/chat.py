"""Chat templates and multi-turn chat: messages -> prompt text -> token ids, end-of-turn stops.

A template is the GGUF's `tokenizer.chat_template` (Jinja, as Hugging Face and llama.cpp use it), a
built-in by name (`BUILTINS`: our own small Jinja renderings of llama.cpp's named formats) or a file.
Templates inside a downloaded GGUF are untrusted code: they run only in jinja2's
ImmutableSandboxedEnvironment (CVE-2024-34359 was an RCE through an unsandboxed one), with bounds on
render time, output size and ranges (`ChatLimits`). `ChatSession` keeps an engine's KV cache across
turns and evaluates only the tokens a turn adds. Sits between `generate` and `api`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Cycler, Joiner, Namespace
from jinja2.visitor import NodeTransformer

from realm.errors import ChatTemplateError, ChatTemplateRaised, RealmError
from realm.generate import Generation
from realm.sampling import SamplingParams

log = logging.getLogger(__name__)

GGUF_KEY = "tokenizer.chat_template"


@dataclass(frozen=True)
class ChatLimits:
    """Bounds on one render of an (untrusted) template."""

    seconds: float = 2.0  # wall time of one render, checked at every call, attribute, item and loop step
    max_output: int = 1 << 22  # characters of output, and of any string or list the template builds
    max_range: int = 100_000  # items of one range()
    max_source: int = 1 << 20  # characters of template source
    max_messages: int = 100_000


DEFAULT_LIMITS = ChatLimits()

# Vocabulary entries that end an assistant turn in the common template families. A template's are
# those that occur in its source (and are special tokens of the vocabulary); built-ins name theirs.
END_OF_TURN_TEXTS = (
    "<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|eot|>", "<|EOT|>",
    "<|END_OF_TURN_TOKEN|>", "<|end_of_text|>", "<|endoftext|>", "<｜end▁of▁sentence｜>", "<|turn_end|>",
    "<|end_of_turn|>", "<|message_sep|>", "[|endofturn|]", "<|endofturn|>", "<seed:eos>", "<|role_end|>", "</s>",
)


# -- the sandbox ----------------------------------------------------------------------------------

def _size(value: Any, budget: int) -> int:
    """Approximate length of `str(value)`, walking containers; stops once past `budget`."""
    total, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v) + 2
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += 2 + len(v)
            stack.extend(v)
        elif isinstance(v, dict):
            total += 2 + 2 * len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, int) and not isinstance(v, bool):
            total += v.bit_length() // 3 + 1
        else:
            total += 8
        if total > budget:
            return total
    return total


_SLOW_FILTERS = frozenset({"wordwrap", "urlize", "striptags", "wordcount", "xmlattr"})
_PRINTF_WIDTH = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask marker): renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _Guard(NodeTransformer):
    """Rewrite the parsed template so every loop's iterable and every `~` go through the sandbox."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = nodes.Call(nodes.EnvironmentAttribute("realm_iter"), [node.iter], [], None, None,
                               lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return nodes.Call(nodes.EnvironmentAttribute("realm_join"), list(node.nodes), [], None, None,
                          lineno=node.lineno)


class _Loop:
    """An iterable whose every step checks the render deadline (keeps len() for loop.length)."""

    __slots__ = ("_it", "_env")

    def __init__(self, iterable, env: "_Sandbox"):
        self._it, self._env = iterable, env

    def __len__(self) -> int:
        return len(self._it)

    def __iter__(self):
        check = self._env.check
        for item in self._it:
            check()
            yield item


class _Sandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with transformers' settings and per-render bounds.

    The deadline and sizes are checked in the hooks the sandbox already routes through (call,
    getattr, getitem, binary operators), in every loop step and at every string or list the
    template builds; the per-render state is thread-local so one template may render concurrently.
    """

    intercepted_binops = frozenset({"*", "**", "%", "+", "//"})

    def __init__(self, limits: ChatLimits):
        super().__init__(trim_blocks=True, lstrip_blocks=True, autoescape=False, optimized=False,
                         extensions=[loopcontrols, _GenerationTag], finalize=self._finalize)
        self.limits = limits
        self._state = threading.local()
        self.globals = {
            "range": self._range, "dict": dict, "namespace": Namespace, "cycler": Cycler, "joiner": Joiner,
            "raise_exception": _raise_exception, "strftime_now": _strftime_now,
        }
        self.filters = {name: self._guard_filter(name, f) for name, f in self.filters.items()}
        self.filters["tojson"] = self._guard_filter("tojson", _tojson)

    # the per-render clock
    def start(self) -> None:
        self._state.deadline = time.perf_counter() + self.limits.seconds

    def check(self) -> None:
        deadline = getattr(self._state, "deadline", None)
        if deadline is not None and time.perf_counter() > deadline:
            raise ChatTemplateError(f"the chat template ran past its time limit of {self.limits.seconds:g} s")

    def check_size(self, value: Any, what: str = "a value") -> Any:
        if _size(value, self.limits.max_output) > self.limits.max_output:
            raise ChatTemplateError(f"the chat template built {what} larger than the limit of "
                                    f"{self.limits.max_output} characters")
        return value

    # hooks
    def _parse(self, source, name, filename):
        return _Guard().visit(super()._parse(source, name, filename))

    def concat(self, parts: Iterable[Any]) -> str:  # joins every buffered block (set blocks, macros, loops)
        out, n, limit = [], 0, self.limits.max_output
        for p in parts:
            n += len(p)
            if n > limit:
                raise ChatTemplateError(f"the chat template's output passed the limit of {limit} characters")
            out.append(p)
        return "".join(out)

    def _finalize(self, value: Any) -> Any:
        if not isinstance(value, str):
            self.check_size(value, "an output value")
        return value

    def realm_iter(self, iterable) -> _Loop:
        self.check()
        return _Loop(iterable, self)

    def realm_join(self, *parts: Any) -> str:
        self.check()
        budget = self.limits.max_output
        for p in parts:
            budget -= _size(p, budget + 1) - 2
            if budget < 0:
                raise ChatTemplateError(f"the chat template built a string longer than {self.limits.max_output} characters")
        return "".join(str(p) for p in parts)

    def unsafe_undefined(self, obj: Any, attribute: str):
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    def _range(self, *args: int) -> range:
        r = range(*args)
        if len(r) > self.limits.max_range:
            raise ChatTemplateError(f"the chat template asked for a range of {len(r)} items "
                                    f"(limit {self.limits.max_range})")
        return r

    def call(self, context, obj, /, *args, **kwargs):
        self.check()
        self._precheck_method(obj, args)
        return self.check_size(super().call(context, obj, *args, **kwargs), "a value")

    def getattr(self, obj, attribute):
        self.check()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        self.check()
        return super().getitem(obj, argument)

    def call_binop(self, context, operator, left, right):
        self.check()
        limit = self.limits.max_output
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > 4 * limit:
                    raise ChatTemplateError("the chat template multiplied integers too large")
            else:
                seq, n = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(n, int) and isinstance(seq, (str, list, tuple)) and n > 0:
                    if _size(seq, limit) * n > limit:
                        raise ChatTemplateError(f"the chat template repeated a sequence past the limit of {limit} characters")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if left.bit_length() * right > 4 * limit:
                    raise ChatTemplateError(f"the chat template computed {left}**{right}, an integer too large")
        elif operator == "%" and isinstance(left, str):
            self._check_printf(left)
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
            if _size(left, limit) + _size(right, limit) > limit:
                raise ChatTemplateError(f"the chat template built a value larger than {limit} characters")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value):
        wrapper = super().wrap_str_format(value)
        if wrapper is not None:
            self._check_format(value.__self__)
        return wrapper

    # size pre-checks for the operations whose result can be far larger than their inputs
    def _check_width(self, n: Any) -> None:
        if isinstance(n, int) and n > self.limits.max_output:
            raise ChatTemplateError(f"the chat template asked for a width of {n} (limit {self.limits.max_output})")

    def _check_printf(self, fmt: str) -> None:
        for m in _PRINTF_WIDTH.finditer(fmt):
            for g in m.groups():
                if g == "*":
                    raise ChatTemplateError("the chat template used a '*' width in a % format")
                if g:
                    self._check_width(int(g))

    def _check_format(self, fmt: str) -> None:
        try:
            fields = list(string.Formatter().parse(fmt))
        except ValueError as e:
            raise ChatTemplateError(f"the chat template has a bad format string: {e}") from None
        for _, _, spec, _ in fields:
            if spec and "{" in spec:
                raise ChatTemplateError("the chat template used a nested format spec")
            for d in _DIGITS.findall(spec or ""):
                self._check_width(int(d))

    def _precheck_method(self, obj: Any, args: tuple) -> None:
        owner = getattr(obj, "__self__", None)
        if not isinstance(owner, str):
            return
        name = getattr(obj, "__name__", "")
        limit = self.limits.max_output
        if name in ("center", "ljust", "rjust", "zfill") and args:
            self._check_width(args[0])
        elif name == "expandtabs":
            tab = args[0] if args else 8
            if isinstance(tab, int) and len(owner) * max(tab, 1) > limit:
                raise ChatTemplateError("the chat template expanded tabs past the output limit")
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            hits = owner.count(args[0]) if args[0] else len(owner) + 1
            if len(owner) + hits * max(len(args[1]) - len(args[0]), 0) > limit:
                raise ChatTemplateError("the chat template's replace() would pass the output limit")
        elif name == "join" and args:
            if _size(args[0], limit) + len(owner) * _size(args[0], limit) > limit and len(owner) > 0:
                raise ChatTemplateError("the chat template's join() would pass the output limit")
            self.check_size(args[0], "a joined list")

    def _guard_filter(self, name: str, f: Callable) -> Callable:
        env = self

        @wraps(f)
        def guarded(*args, **kwargs):
            env.check()
            env._precheck_filter(name, f, args, kwargs)
            return env.check_size(f(*args, **kwargs), f"the result of |{name}")

        return guarded

    def _precheck_filter(self, name: str, f: Callable, args: tuple, kwargs: dict) -> None:
        # environment/context-taking filters get it first
        if getattr(f, "jinja_pass_arg", None) is not None:
            args = args[1:]
        if not args:
            return
        value, rest = args[0], args[1:]
        limit = self.limits.max_output
        if name == "center":
            self._check_width(rest[0] if rest else kwargs.get("width", 80))
        elif name == "indent":
            width = rest[0] if rest else kwargs.get("width", 4)
            w = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            if isinstance(value, str) and w * (value.count("\n") + 1) + len(value) > limit:
                raise ChatTemplateError("the chat template's |indent would pass the output limit")
        elif name == "format" and isinstance(value, str):
            self._check_printf(value)
        elif name == "replace" and isinstance(value, str) and len(rest) >= 2:
            old, new = str(rest[0]), str(rest[1])
            hits = value.count(old) if old else len(value) + 1
            if len(value) + hits * max(len(new) - len(old), 0) > limit:
                raise ChatTemplateError("the chat template's |replace would pass the output limit")
        elif name in ("join", "string", "list", "pprint", "sum"):
            self.check_size(value, f"the input of |{name}")
        elif name == "tojson":
            indent = rest[0] if rest else kwargs.get("indent")
            if isinstance(indent, int) and indent > 64:
                raise ChatTemplateError(f"the chat template asked |tojson for an indent of {indent} (limit 64)")
            self.check_size(value, "the input of |tojson")
        elif name in ("batch", "slice"):
            n = rest[0] if rest else kwargs.get("linecount", kwargs.get("slices"))
            fill = rest[1] if len(rest) > 1 else kwargs.get("fill_with")
            if (name == "slice" or fill is not None) and isinstance(n, int) and n > self.limits.max_range:
                raise ChatTemplateError(f"the chat template asked |{name} for {n} items (limit {self.limits.max_range})")
        elif name in _SLOW_FILTERS and isinstance(value, str) and len(value) > limit // 64:
            raise ChatTemplateError(f"the chat template passed {len(value)} characters to |{name} "
                                    f"(limit {limit // 64})")


def _raise_exception(message: Any = "") -> None:
    raise ChatTemplateRaised(f"the chat template rejected the conversation: {message}")


def _strftime_now(fmt: Any) -> str:
    if not isinstance(fmt, str) or len(fmt) > 256:
        raise ChatTemplateError("strftime_now() takes a format string of at most 256 characters")
    return datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, separators=None, sort_keys: bool = False,
            ensure_ascii: bool = False) -> str:
    """transformers' tojson: plain json.dumps (no HTML escaping), keyword options as there."""
    try:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=tuple(separators) if separators is not None else None, sort_keys=sort_keys)
    except (TypeError, ValueError) as e:
        raise ChatTemplateError(f"the chat template's |tojson failed: {e}") from None


# -- built-in templates ---------------------------------------------------------------------------
# Our own Jinja renderings of llama.cpp's named formats (llm_chat_apply_template in src/llama-chat.cpp,
# https://github.com/ggml-org/llama.cpp/blob/b6710/src/llama-chat.cpp): the same text for the same
# messages. Each entry: (template, end-of-turn texts). `bos_token` is not written: the tokenizer adds it.

_LLAMA2 = (
    "{{ '[INST] ' }}{%- set ns = namespace(inside=true) %}"
    "{%- for m in messages %}"
    "{%- set content = m.content | trim if STRIP else m.content %}"
    "{%- if not ns.inside %}{% set ns.inside = true %}{{ '<s>[INST] ' if BOS else '[INST] ' }}{% endif %}"
    "{%- if m.role == 'system' %}{{ ('<<SYS>>\n' ~ content ~ '\n<</SYS>>\n\n') if SYS else (content ~ '\n') }}"
    "{%- elif m.role == 'user' %}{{ content ~ ' [/INST]' }}"
    "{%- else %}{{ content ~ '</s>' }}{% set ns.inside = false %}{% endif %}"
    "{%- endfor %}"
)


def _llama2(sys: bool, bos: bool, strip: bool) -> str:
    return (f"{{%- set SYS = {str(sys).lower()} %}}{{%- set BOS = {str(bos).lower()} %}}"
            f"{{%- set STRIP = {str(strip).lower()} %}}" + _LLAMA2)


def _mistral(lead: str, trail: str, trim_assistant: bool) -> str:
    content = "m.content | trim" if trim_assistant else "m.content"
    return (
        "{%- set ns = namespace(inside=false) %}"
        "{%- for m in messages %}"
        f"{{%- if not ns.inside %}}{{{{ '{lead}[INST]{trail}' }}}}{{% set ns.inside = true %}}{{% endif %}}"
        "{%- if m.role == 'system' %}{{ m.content ~ '\n\n' }}"
        f"{{%- elif m.role == 'user' %}}{{{{ m.content ~ '{lead}[/INST]' }}}}"
        f"{{%- else %}}{{{{ '{trail}' ~ {content} ~ '</s>' }}}}{{% set ns.inside = false %}}{{% endif %}}"
        "{%- endfor %}"
    )


def _mistral7(trail: str) -> str:
    return (
        "{%- for m in messages %}"
        f"{{%- if m.role == 'system' %}}{{{{ '[SYSTEM_PROMPT]{trail}' ~ m.content ~ '[/SYSTEM_PROMPT]' }}}}"
        f"{{%- elif m.role == 'user' %}}{{{{ '[INST]{trail}' ~ m.content ~ '[/INST]' }}}}"
        f"{{%- else %}}{{{{ '{trail}' ~ m.content ~ '</s>' }}}}{{% endif %}}"
        "{%- endfor %}"
    )


def _each(line: str, gen: str = "") -> str:
    """A template writing `line` per message (with `m` bound), then `gen` as the generation prompt."""
    return "{%- for m in messages %}" + line + "{%- endfor %}" + (
        "{%- if add_generation_prompt %}" + gen + "{% endif %}" if gen else "")


BUILTINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "chatml": (_each("{{ '<|im_start|>' ~ m.role ~ '\n' ~ m.content ~ '<|im_end|>\n' }}",
                     "{{ '<|im_start|>assistant\n' }}"), ("<|im_end|>",)),
    "llama2": (_llama2(False, False, False), ("</s>",)),
    "llama2-sys": (_llama2(True, False, False), ("</s>",)),
    "llama2-sys-bos": (_llama2(True, True, False), ("</s>",)),
    "llama2-sys-strip": (_llama2(True, False, True), ("</s>",)),
    "mistral-v1": (_mistral(" ", " ", False), ("</s>",)),
    "mistral-v3": (_mistral("", " ", True), ("</s>",)),
    "mistral-v3-tekken": (_mistral("", "", False), ("</s>",)),
    "mistral-v7": (_mistral7(" "), ("</s>",)),
    "mistral-v7-tekken": (_mistral7(""), ("</s>",)),
    "phi3": (_each("{{ '<|' ~ m.role ~ '|>\n' ~ m.content ~ '<|end|>\n' }}", "{{ '<|assistant|>\n' }}"),
             ("<|end|>",)),
    "phi4": (_each("{{ '<|im_start|>' ~ m.role ~ '<|im_sep|>' ~ m.content ~ '<|im_end|>' }}",
                   "{{ '<|im_start|>assistant<|im_sep|>' }}"), ("<|im_end|>",)),
    "falcon3": (_each("{{ '<|' ~ m.role ~ '|>\n' ~ m.content ~ '\n' }}", "{{ '<|assistant|>\n' }}"), ()),
    "zephyr": (_each("{{ '<|' ~ m.role ~ '|>\n' ~ m.content ~ '<|endoftext|>\n' }}", "{{ '<|assistant|>\n' }}"),
               ("<|endoftext|>",)),
    "monarch": (_each("{{ ('' if loop.first else '<s>') ~ m.role ~ '\n' ~ m.content ~ '</s>\n' }}",
                      "{{ '<s>assistant\n' }}"), ("</s>",)),
    "gemma": (
        "{%- set ns = namespace(system='') %}"
        "{%- for m in messages %}"
        "{%- if m.role == 'system' %}{% set ns.system = ns.system ~ (m.content | trim) %}"
        "{%- else %}{% set role = 'model' if m.role == 'assistant' else m.role %}"
        "{{ '<start_of_turn>' ~ role ~ '\n' }}"
        "{%- if ns.system and role != 'model' %}{{ ns.system ~ '\n\n' }}{% set ns.system = '' %}{% endif %}"
        "{{ (m.content | trim) ~ '<end_of_turn>\n' }}{% endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}", ("<end_of_turn>",)),
    "orion": (
        "{%- set ns = namespace(system='') %}"
        "{%- for m in messages %}"
        "{%- if m.role == 'system' %}{% set ns.system = ns.system ~ m.content %}"
        "{%- elif m.role == 'user' %}{{ 'Human: ' }}{% if ns.system %}{{ ns.system ~ '\n\n' }}"
        "{% set ns.system = '' %}{% endif %}{{ m.content ~ '\n\nAssistant: </s>' }}"
        "{%- else %}{{ m.content ~ '</s>' }}{% endif %}"
        "{%- endfor %}", ("</s>",)),
    "openchat": (_each("{% if m.role == 'system' %}{{ m.content ~ '<|end_of_turn|>' }}"
                       "{% else %}{{ 'GPT4 Correct ' ~ m.role[:1] | upper ~ m.role[1:] ~ ': ' ~ m.content"
                       " ~ '<|end_of_turn|>' }}{% endif %}", "{{ 'GPT4 Correct Assistant:' }}"),
                 ("<|end_of_turn|>",)),
    "vicuna": (_each("{% if m.role == 'system' %}{{ m.content ~ '\n\n' }}"
                     "{% elif m.role == 'user' %}{{ 'USER: ' ~ m.content ~ '\n' }}"
                     "{% elif m.role == 'assistant' %}{{ 'ASSISTANT: ' ~ m.content ~ '</s>\n' }}{% endif %}",
                     "{{ 'ASSISTANT:' }}"), ("</s>",)),
    "vicuna-orca": (_each("{% if m.role == 'system' %}{{ 'SYSTEM: ' ~ m.content ~ '\n' }}"
                          "{% elif m.role == 'user' %}{{ 'USER: ' ~ m.content ~ '\n' }}"
                          "{% elif m.role == 'assistant' %}{{ 'ASSISTANT: ' ~ m.content ~ '</s>\n' }}{% endif %}",
                          "{{ 'ASSISTANT:' }}"), ("</s>",)),
    "deepseek": (_each("{% if m.role == 'system' %}{{ m.content }}"
                       "{% elif m.role == 'user' %}{{ '### Instruction:\n' ~ m.content ~ '\n' }}"
                       "{% elif m.role == 'assistant' %}{{ '### Response:\n' ~ m.content ~ '\n<|EOT|>\n' }}{% endif %}",
                       "{{ '### Response:\n' }}"), ("<|EOT|>",)),
    "deepseek2": (_each("{% if m.role == 'system' %}{{ m.content ~ '\n\n' }}"
                        "{% elif m.role == 'user' %}{{ 'User: ' ~ m.content ~ '\n\n' }}"
                        "{% elif m.role == 'assistant' %}{{ 'Assistant: ' ~ m.content ~ '<｜end▁of▁sentence｜>' }}"
                        "{% endif %}", "{{ 'Assistant:' }}"), ("<｜end▁of▁sentence｜>",)),
    "deepseek3": (_each("{% if m.role == 'system' %}{{ m.content ~ '\n\n' }}"
                        "{% elif m.role == 'user' %}{{ '<｜User｜>' ~ m.content }}"
                        "{% elif m.role == 'assistant' %}{{ '<｜Assistant｜>' ~ m.content ~ '<｜end▁of▁sentence｜>' }}"
                        "{% endif %}", "{{ '<｜Assistant｜>' }}"), ("<｜end▁of▁sentence｜>",)),
    "command-r": (_each("{% set tag = {'system': '<|SYSTEM_TOKEN|>', 'user': '<|USER_TOKEN|>',"
                        " 'assistant': '<|CHATBOT_TOKEN|>'}.get(m.role) %}"
                        "{% if tag %}{{ '<|START_OF_TURN_TOKEN|>' ~ tag ~ (m.content | trim) ~ '<|END_OF_TURN_TOKEN|>' }}"
                        "{% endif %}", "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}"),
                  ("<|END_OF_TURN_TOKEN|>",)),
    "llama3": (_each("{{ '<|start_header_id|>' ~ m.role ~ '<|end_header_id|>\n\n' ~ (m.content | trim) ~ '<|eot_id|>' }}",
                     "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"), ("<|eot_id|>", "<|eom_id|>")),
    "llama4": (_each("{{ '<|header_start|>' ~ m.role ~ '<|header_end|>\n\n' ~ (m.content | trim) ~ '<|eot|>' }}",
                     "{{ '<|header_start|>assistant<|header_end|>\n\n' }}"), ("<|eot|>",)),
    "chatglm3": ("{{ '[gMASK]sop' }}" + _each("{{ '<|' ~ m.role ~ '|>\n ' ~ m.content }}", "{{ '<|assistant|>' }}"),
                 ("<|user|>",)),
    "chatglm4": ("{{ '[gMASK]<sop>' }}" + _each("{{ '<|' ~ m.role ~ '|>\n' ~ m.content }}", "{{ '<|assistant|>\n' }}"),
                 ("<|user|>",)),
    "glmedge": (_each("{{ '<|' ~ m.role ~ '|>\n' ~ m.content }}", "{{ '<|assistant|>' }}"), ("<|user|>",)),
    "minicpm": (_each("{% if m.role == 'user' %}{{ '<用户>' ~ (m.content | trim) ~ '<AI>' }}"
                      "{% else %}{{ m.content | trim }}{% endif %}"), ()),
    "exaone3": (_each("{% if m.role == 'system' %}{{ '[|system|]' ~ (m.content | trim) ~ '[|endofturn|]\n' }}"
                      "{% elif m.role == 'user' %}{{ '[|user|]' ~ (m.content | trim) ~ '\n' }}"
                      "{% elif m.role == 'assistant' %}{{ '[|assistant|]' ~ (m.content | trim) ~ '[|endofturn|]\n' }}"
                      "{% endif %}", "{{ '[|assistant|]' }}"), ("[|endofturn|]",)),
    "granite": (_each("{{ '<|start_of_role|>' ~ m.role ~ '<|end_of_role|>' }}"
                      "{% if m.role == 'assistant_tool_call' %}{{ '<|tool_call|>' }}{% endif %}"
                      "{{ m.content ~ '<|end_of_text|>\n' }}", "{{ '<|start_of_role|>assistant<|end_of_role|>' }}"),
                ("<|end_of_text|>",)),
    "granite-4.0": (_each("{% if m.role == 'assistant_tool_call' %}"
                          "{{ '<|start_of_role|>assistant<|end_of_role|><|tool_call|>' }}"
                          "{% else %}{{ '<|start_of_role|>' ~ m.role ~ '<|end_of_role|>' }}{% endif %}"
                          "{{ m.content ~ '<|end_of_text|>\n' }}", "{{ '<|start_of_role|>assistant<|end_of_role|>' }}"),
                    ("<|end_of_text|>",)),
    "gigachat": (
        "{%- set has_system = messages and messages[0].role == 'system' %}"
        "{{ ('<s>' ~ messages[0].content ~ '<|message_sep|>') if has_system else '<s>' }}"
        "{%- set rest = messages[1:] if has_system else messages %}{%- for m in rest %}"
        "{%- if m.role == 'user' %}{{ 'user<|role_sep|>' ~ m.content ~ '<|message_sep|>available functions<|role_sep|>[]<|message_sep|>' }}"
        "{%- elif m.role == 'assistant' %}{{ 'assistant<|role_sep|>' ~ m.content ~ '<|message_sep|>' }}{% endif %}"
        "{%- endfor %}{% if add_generation_prompt %}{{ 'assistant<|role_sep|>' }}{% endif %}", ("<|message_sep|>",)),
    "megrez": (_each("{{ '<|role_start|>' ~ m.role ~ '<|role_end|>' ~ m.content ~ '<|turn_end|>' }}",
                     "{{ '<|role_start|>assistant<|role_end|>' }}"), ("<|turn_end|>",)),
    "yandex": (_each("{% if m.role == 'user' %}{{ ' Пользователь: ' ~ m.content ~ '\n\n' }}"
                     "{% elif m.role == 'assistant' %}{{ ' Ассистент: ' ~ m.content ~ '\n\n' }}{% endif %}",
                     "{{ ' Ассистент:[SEP]' }}"), ()),
    "bailing": (_each("{{ '<role>' ~ ('HUMAN' if m.role == 'user' else m.role | upper) ~ '</role>' ~ m.content }}",
                      "{{ '<role>ASSISTANT</role>' }}"), ()),
    "seed_oss": (_each("{{ '<seed:bos>' ~ m.role ~ '\n' ~ ((m.content | trim) if m.role == 'assistant' else m.content)"
                       " ~ '<seed:eos>' }}", "{{ '<seed:bos>assistant\n' }}"), ("<seed:eos>",)),
}
BUILTIN_ALIASES = {"llama-2": "llama2", "llama-3": "llama3", "mistral": "mistral-v7", "gemma3": "gemma",
                   "gemma2": "gemma", "phi-3": "phi3", "qwen": "chatml", "qwen2": "chatml", "qwen3": "chatml",
                   "command-r-plus": "command-r", "granite-3": "granite"}


def builtin_names() -> list[str]:
    return sorted(BUILTINS)


# -- messages ------------------------------------------------------------------------------------

def _json_like(v: Any, depth: int = 0) -> bool:
    if depth > 16:
        return False
    if v is None or isinstance(v, (str, bool, int, float)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_json_like(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _json_like(x, depth + 1) for k, x in v.items())
    return False


def validate_messages(messages: Any, limits: ChatLimits = DEFAULT_LIMITS) -> list[dict[str, Any]]:
    """Check `messages` ([{"role": str, "content": str, ...}, ...]) and return plain-dict copies."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                                f"got {type(messages).__name__}")
    if len(messages) > limits.max_messages:
        raise ChatTemplateError(f"too many messages ({len(messages)}; limit {limits.max_messages})")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ChatTemplateError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise ChatTemplateError(f"messages[{i}]['role'] must be a non-empty string, got {role!r}")
        if not isinstance(content, str):
            raise ChatTemplateError(f"messages[{i}]['content'] must be a string, got {type(content).__name__}")
        extra = {}
        for k, v in m.items():
            if k in ("role", "content"):
                continue
            if not isinstance(k, str) or not _json_like(v):
                raise ChatTemplateError(f"messages[{i}][{k!r}] must be a JSON-like value")
            extra[k] = json.loads(json.dumps(v))  # a private copy
        out.append({"role": role, "content": content, **extra})
    return out


# -- the template --------------------------------------------------------------------------------

class ChatTemplate:
    """A compiled, sandboxed chat template.

    Parameters
    ----------
    source : Jinja template text
    name : where it came from ("gguf", a built-in name, or a file path), for messages
    bos_token, eos_token : the texts the template sees as `bos_token` / `eos_token`
    end_of_turn : texts ending an assistant turn (default: those of END_OF_TURN_TEXTS in `source`)
    tokenizer : the model's tokenizer, which `stop_ids` and `encode` use when given
    """

    def __init__(self, source: str, *, name: str = "template", bos_token: str = "", eos_token: str = "",
                 end_of_turn: Sequence[str] | None = None, tokenizer=None, limits: ChatLimits = DEFAULT_LIMITS):
        if not isinstance(source, str):
            raise ChatTemplateError(f"chat template {name} must be text, got {type(source).__name__}")
        if len(source) > limits.max_source:
            raise ChatTemplateError(f"chat template {name} has {len(source)} characters (limit {limits.max_source})")
        self.source, self.name, self.limits = source, name, limits
        self.bos_token, self.eos_token = bos_token, eos_token
        self.tokenizer = tokenizer
        self.end_of_turn = tuple(end_of_turn) if end_of_turn is not None else tuple(
            t for t in END_OF_TURN_TEXTS if t in source)
        self._env = _Sandbox(limits)
        try:
            self._env.start()
            self._template = self._env.from_string(source)
        except TemplateSyntaxError as e:
            raise ChatTemplateError(f"chat template {name} does not parse: {e.message} (line {e.lineno})") from None
        except ChatTemplateError:
            raise
        except (TemplateError, RecursionError, MemoryError, ValueError, TypeError) as e:
            raise ChatTemplateError(f"chat template {name} does not compile: {type(e).__name__}: {e}") from None
        self._system_ok: bool | None = None

    # construction
    @classmethod
    def builtin(cls, name: str, *, bos_token: str = "", eos_token: str = "", tokenizer=None,
                limits: ChatLimits = DEFAULT_LIMITS) -> ChatTemplate:
        key = BUILTIN_ALIASES.get(name, name)
        if key not in BUILTINS:
            raise ChatTemplateError(f"unknown chat template name {name!r}; built-ins: {', '.join(builtin_names())} "
                                    "(or pass a Jinja file with --chat-template-file)")
        source, eot = BUILTINS[key]
        t = cls(source, name=key, bos_token=bos_token, eos_token=eos_token, end_of_turn=eot,
                tokenizer=tokenizer, limits=limits)
        t._system_ok = True  # built-ins place the system message themselves, as llama.cpp's do
        return t

    @classmethod
    def from_file(cls, file: str | os.PathLike, *, limits: ChatLimits = DEFAULT_LIMITS, **kwargs) -> ChatTemplate:
        path = Path(file)
        try:
            with open(path, "rb") as f:
                data = f.read(limits.max_source * 4 + 1)
        except OSError as e:
            raise ChatTemplateError(f"cannot read chat template file {path}: {e.strerror or e}") from None
        if len(data) > limits.max_source * 4:
            raise ChatTemplateError(f"chat template file {path} is too large (limit {limits.max_source} characters)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ChatTemplateError(f"chat template file {path} is not UTF-8 ({e.reason} at byte {e.start})") from None
        return cls(text, name=str(path), limits=limits, **kwargs)

    @classmethod
    def for_model(cls, model, name: str | None = None, file: str | os.PathLike | None = None, *,
                  limits: ChatLimits = DEFAULT_LIMITS) -> ChatTemplate:
        """The chat template of `model` (a `realm.api.Model`): `name` (a built-in) or `file` if given,
        else the GGUF's `tokenizer.chat_template`; bound to the model's tokenizer."""
        tok = model.tokenizer
        special = {"bos_token": _token_text(tok, tok.bos_id), "eos_token": _token_text(tok, tok.eos_id),
                   "tokenizer": tok, "limits": limits}
        if name is not None and file is not None:
            raise ChatTemplateError("give a chat template name or a template file, not both")
        if name is not None:
            return cls.builtin(name, **special)
        if file is not None:
            return cls.from_file(file, **special)
        source = model.gguf.metadata.get(GGUF_KEY)
        if source is None:
            raise ChatTemplateError(
                f"{Path(model.path).name} has no chat template ({GGUF_KEY}): it may be a base model. Pass one: "
                f"--chat-template NAME ({', '.join(sorted(('chatml', 'llama3', 'gemma', 'phi3', 'mistral-v7')))}, ...; "
                "`realm chat --help` lists them) or --chat-template-file FILE; in Python, "
                "template=ChatTemplate.for_model(model, name=...) or a name")
        if not isinstance(source, str):
            raise ChatTemplateError(f"{GGUF_KEY} must be a string, got {type(source).__name__}")
        if source.strip() in BUILTINS:  # llama.cpp accepts a built-in's name in place of a template
            return cls.builtin(source.strip(), **special)
        return cls(source, name=f"{GGUF_KEY} of {Path(model.path).name}", **special)

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, end_of_turn={self.end_of_turn})"

    # rendering
    def _render(self, messages: list[dict], add_generation_prompt: bool, variables: Mapping[str, Any]) -> str:
        env, limit = self._env, self.limits.max_output
        context = {"messages": messages, "add_generation_prompt": bool(add_generation_prompt),
                   "bos_token": self.bos_token, "eos_token": self.eos_token, **variables}
        out, n = [], 0
        env.start()
        try:
            for piece in self._template.generate(context):
                n += len(piece)
                if n > limit:
                    raise ChatTemplateError(f"the chat template's output passed the limit of {limit} characters")
                out.append(piece)
                env.check()
        except ChatTemplateError as e:
            raise type(e)(f"{self.name}: {e}") from None
        except SecurityError as e:
            raise ChatTemplateError(f"{self.name}: the chat template tried an unsafe operation ({e})") from None
        except RecursionError:
            raise ChatTemplateError(f"{self.name}: the chat template recursed too deeply") from None
        except MemoryError:
            raise ChatTemplateError(f"{self.name}: the chat template ran out of memory") from None
        except TemplateError as e:
            raise ChatTemplateError(f"{self.name}: the chat template failed: {e}") from None
        except Exception as e:  # noqa: BLE001 - untrusted code: any failure of it is the template's
            raise ChatTemplateError(f"{self.name}: the chat template failed: {type(e).__name__}: {e}") from None
        finally:
            env._state.deadline = None
        return "".join(out)

    def supports_system(self) -> bool:
        """Whether the template renders a system message's content (llama.cpp's capability probe;
        when not, `render` merges a leading system message into the next message, as llama.cpp does)."""
        if self._system_ok is None:
            marker = "SYSTEM_MARKER_9b1f"
            try:
                text = self._render([{"role": "system", "content": marker}, {"role": "user", "content": "U"}],
                                    True, {})
                self._system_ok = marker in text
            except ChatTemplateRaised:
                self._system_ok = False
        return self._system_ok

    def render(self, messages: list[dict], add_generation_prompt: bool = True, *,
               variables: Mapping[str, Any] | None = None) -> str:
        """The prompt text for `messages` ([{"role", "content"}, ...]).

        Variables as llama.cpp's server and transformers pass them: `messages`, `add_generation_prompt`,
        `bos_token`, `eos_token`, `raise_exception`, `strftime_now`; tools are off (`tools` undefined).
        `variables` adds JSON-like extras (e.g. `{"enable_thinking": False}`).
        """
        msgs = validate_messages(messages, self.limits)
        extra = {}
        for k, v in (variables or {}).items():
            if not isinstance(k, str) or not k.isidentifier() or not _json_like(v):
                raise ChatTemplateError(f"template variable {k!r} must be an identifier with a JSON-like value")
            extra[k] = v
        if msgs and msgs[0]["role"] == "system" and not self.supports_system():
            first = msgs.pop(0)
            if msgs:
                msgs[0] = {**msgs[0], "content": first["content"] + "\n" + msgs[0]["content"]}
            else:
                log.warning("%s: the template has no system role; the system message is dropped", self.name)
        return self._render(msgs, add_generation_prompt, extra)

    # tokens
    def _tok(self, tokenizer):
        tok = tokenizer if tokenizer is not None else self.tokenizer
        if tok is None:
            raise ChatTemplateError("this chat template has no tokenizer: pass one, or use ChatTemplate.for_model")
        return tok

    def encode_text(self, tokenizer, text: str) -> list[int]:
        """Token ids of rendered text: special tokens parsed; BOS added unless the text starts with it."""
        tok = self._tok(tokenizer)
        bos = _token_text(tok, tok.bos_id)
        starts_with_bos = bool(bos) and text.startswith(bos)
        return tok.encode(text, add_bos=not starts_with_bos, special=True)

    def encode(self, tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """`render` then tokenize (special tokens parsed; no doubled BOS, as llama.cpp)."""
        return self.encode_text(tokenizer, self.render(messages, add_generation_prompt))

    def stop_ids_for(self, tokenizer) -> frozenset[int]:
        """The tokenizer's end-of-generation ids plus this template's end-of-turn tokens."""
        tok = self._tok(tokenizer)
        ids = set(tok.stop_ids)
        for text in self.end_of_turn:
            i = tok.id_of(text)
            if i is None:
                continue
            if text == "<|end|>" and tok.id_of("<|return|>") is not None:  # gpt-oss: <|end|> ends a message only
                continue
            if tok.is_control(i) or int(tok.token_type(i)) == 4:  # control or user-defined, never plain text
                ids.add(i)
        return frozenset(ids)

    @property
    def stop_ids(self) -> frozenset[int]:
        return self.stop_ids_for(None)


def _token_text(tok, token_id: int | None) -> str:
    return tok.token_text(token_id) if token_id is not None else ""


# -- generation ----------------------------------------------------------------------------------

class _TurnGeneration(Generation):
    """A Generation that reports to its session when it ends (exhausted, cancelled or abandoned)."""

    def __init__(self, *args, on_finish: Callable[["_TurnGeneration"], None], **kwargs):
        super().__init__(*args, **kwargs)
        self._on_finish = on_finish
        self.started = self.finished = False

    def __iter__(self) -> Iterator[str]:
        self.started = True
        try:
            yield from super().__iter__()
        finally:
            self.finished = True
            self._on_finish(self)


@dataclass
class TurnStats:
    reused_tokens: int = 0  # prompt tokens already in the KV cache
    new_tokens: int = 0  # prompt tokens this turn evaluated
    reset: bool = False  # the cache was cleared (the conversation no longer extended it)


class ChatSession:
    """A multi-turn conversation on one engine: each turn evaluates only the tokens it adds.

    The cache holds the ids evaluated so far. A new turn's prompt is the evaluated ids plus the
    tokens of what the re-rendered conversation adds after them (the model's own reply tokens are
    kept, as llama.cpp's CLI does); when the rendering no longer extends what was evaluated, the
    whole conversation is re-encoded and the cache is reused for the shared prefix only if the
    evaluated ids are all a prefix of it, else reset.
    """

    def __init__(self, model, engine, template: ChatTemplate, *, system: str | None = None,
                 max_tokens: int = 256, sampling: SamplingParams | None = None, stop: Sequence[str] = ()):
        self.model, self.engine, self.template = model, engine, template
        self.tokenizer = model.tokenizer
        self.system = system
        self.max_tokens, self.sampling, self.stop = max_tokens, sampling or SamplingParams(), tuple(stop)
        self.stop_ids = template.stop_ids_for(self.tokenizer)
        self.messages: list[dict[str, str]] = []
        self._evaluated: list[int] = []  # ids the engine holds, in order (engine.n_past of them)
        self._text: str | None = None  # the text whose tokens are self._text_ids (None: unknown)
        self._text_ids: list[int] = []
        self._pending: _TurnGeneration | None = None
        self.last = TurnStats()
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays) and clear the KV cache."""
        if self._pending is not None and self._pending.started and not self._pending.finished:
            raise RealmError("a reply is still being generated")
        self._pending = None
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.engine.reset()
        self._evaluated, self._text, self._text_ids = [], None, []

    @property
    def n_past(self) -> int:
        return len(self._evaluated)

    def _prompt_ids(self, messages: list[dict]) -> tuple[list[int], str]:
        text = self.template.render(messages, add_generation_prompt=True)
        if self._text is not None and text.startswith(self._text):
            delta = self.tokenizer.encode(text[len(self._text):], add_bos=False, special=True)
            # the delta is tokenized on its own: accept that only where it starts at a special token
            if delta and self.tokenizer.is_control(delta[0]):
                return self._text_ids + delta, text
        return self.template.encode_text(self.tokenizer, text), text

    def send(self, content: str, *, max_tokens: int | None = None) -> Generation:
        """Add a user message and return the streaming reply (iterate it; `.stats` afterwards).

        When the reply ends, it becomes the assistant's message (also when cancelled: the part so far).
        """
        if not isinstance(content, str):
            raise ChatTemplateError(f"a message must be a string, got {type(content).__name__}")
        if self._pending is not None and self._pending.started and not self._pending.finished:
            raise RealmError("the previous reply is still being generated")
        messages = self.messages + [{"role": "user", "content": content}]
        ids, text = self._prompt_ids(messages)
        n = len(self._evaluated)
        reused = n if n and len(ids) > n and ids[:n] == self._evaluated else 0
        self.last = TurnStats(reused_tokens=reused, new_tokens=len(ids) - reused, reset=bool(n) and not reused)
        if not reused:
            if self.engine.n_past:
                self.engine.reset()
            self._evaluated = []
        base = ids  # absolute positions from 0

        def finish(gen: _TurnGeneration) -> None:
            self._pending = None
            seq = base + gen.tokens
            self._evaluated = seq[:self.engine.n_past]
            self.messages = messages + [{"role": "assistant", "content": gen.text}]
            consistent = gen.stats.stop_reason in ("eos", "max_tokens", "cancelled", "context")
            self._text, self._text_ids = (text + gen.text, seq) if consistent else (None, [])

        gen = _TurnGeneration(self.engine, self.tokenizer, ids[reused:], on_finish=finish,
                              max_tokens=self.max_tokens if max_tokens is None else max_tokens,
                              sampling=self.sampling, stop=self.stop, stop_ids=self.stop_ids)
        self._pending = gen
        return gen
