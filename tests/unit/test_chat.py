"""Chat templates: llama.cpp's 70 real templates and its expected renderings (parsed out of
test-chat-template.cpp), the built-ins, the sandbox's bounds on hostile templates, encoding, stops,
and ChatSession's KV-cache reuse on a synthetic instruct-style model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import chat_cases
from chat_synth import REPLY, make_chat_model
from realm.chat import BUILTINS, ChatLimits, ChatTemplate, validate_messages
from realm.errors import ChatTemplateError, ChatTemplateRaised, RealmError
from realm.generate import Generation
from realm.sampling import SamplingParams

STANDARD = [  # the conversation every real template renders: system / user / assistant / user
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Who are you"},
]
# Templates that need a variable of their own to render at all (recorded, not hidden): Firefunction v2
# concatenates its `functions` (the tool list as a JSON string) into the system prompt.
NEEDS_VARIABLES = {"fireworks-ai-llama-3-firefunction-v2.jinja": {"functions": "[]"}}
# llama.cpp test case (name prefix) -> our built-in that reproduces its `expected_output`
BUILTIN_OF_CASE = {
    "teknium/OpenHermes-2.5-Mistral-7B": "chatml",
    "mistralai/Mistral-7B-Instruct-v0.2 (NOTE": "llama2",
    "TheBloke/FusionNet": "llama2-sys-bos",
    "bofenghuang/vigogne": "llama2-sys-strip",
    "mlabonne/AlphaMonarch": "monarch",
    "google/gemma-7b-it": "gemma",
    "OrionStarAI": "orion",
    "openchat/": "openchat",
    "deepseek-ai/deepseek-coder": "deepseek",
    "eachadea/vicuna": "vicuna",
    "Orca-Vicuna": "vicuna-orca",
    "CohereForAI/c4ai-command-r-plus": "command-r",
    "Llama-3": "llama3",
    "Phi-3-mini": "phi3", "Phi-3-small": "phi3", "Phi-3-medium": "phi3", "Phi-3-vision": "phi3",
    "ChatGLM3": "chatglm3",
    "ChatGLM4": "chatglm4",
    "GLMEdge": "glmedge",
    "MiniCPM": "minicpm",
    "DeepSeek-V2": "deepseek2",
    "ibm-granite/granite-3.0": "granite",
    "mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1'": "mistral-v1",
    "Mistral-Large-Instruct-2407": "mistral-v3",
    "Mistral-Nemo": "mistral-v3-tekken",
    "mistralai/Mistral-Large-Instruct-2411": "mistral-v7",
    "ai-sage/GigaChat": "gigachat",
    "Infinigence/Megrez": "megrez",
    "phi-4": "phi4",
    "yandex/": "yandex",
    "inclusionAI/Ling-lite": "bailing",
    "ByteDance-Seed": "seed_oss",
    "ibm-granite/granite-3.x": "granite",
    "ibm-granite/granite-4.0": "granite-4.0",
    "ibm-granite/granite-4.1": "granite-4.0",
}


@pytest.fixture(scope="module")
def cpp(llama_cpp_testdata):
    return chat_cases.load(llama_cpp_testdata / "tests" / "test-chat-template.cpp")


def _messages(conversation, extra=()):
    return list(conversation) + [{"role": r, "content": c} for r, c in extra]


# -- llama.cpp's real templates and expectations ----------------------------------------------------

def test_every_real_template_renders_the_standard_conversation(llama_cpp_testdata):
    files = sorted((llama_cpp_testdata / "models" / "templates").glob("*.jinja"))
    assert len(files) == 70  # the folder also holds a README.md
    table, failures = [], []
    for f in files:
        t0 = time.perf_counter()
        t = ChatTemplate.from_file(f, bos_token="<s>", eos_token="</s>")
        try:
            out = t.render(STANDARD, variables=NEEDS_VARIABLES.get(f.name))
        except ChatTemplateError as e:
            failures.append(f"{f.name}: {e}")
            continue
        missing = [m["content"] for m in STANDARD if m["content"] not in out]
        if missing:
            failures.append(f"{f.name}: output lacks {missing}")
        table.append((f.name, "ok" if t.supports_system() else "ok (system merged into the first user turn)",
                      time.perf_counter() - t0))
    print("\n".join(f"{name:58} {status:45} {1000 * s:6.1f} ms" for name, status, s in table))
    assert not failures, "\n".join(failures)


def test_firefunction_without_its_variable_fails_clearly(llama_cpp_testdata):
    t = ChatTemplate.from_file(llama_cpp_testdata / "models/templates/fireworks-ai-llama-3-firefunction-v2.jinja")
    with pytest.raises(ChatTemplateError, match="functions"):
        t.render(STANDARD)


def test_llama_cpp_jinja_expectations(cpp):
    """Each test case's template, rendered by us, equals what llama.cpp's Jinja path expects."""
    conversation, cases = cpp
    checked = 0
    for case in cases:
        if not case.supported_with_jinja:  # GigaChat: needs additional_special_tokens (llama.cpp skips it too)
            continue
        t = ChatTemplate(case.template, name=case.name, bos_token=case.bos_token, eos_token=case.eos_token)
        assert t.render(_messages(conversation, case.extra)) == case.expected_jinja, case.name
        checked += 1
    assert checked >= 35


def test_builtins_reproduce_llama_cpp_builtin_formats(cpp):
    conversation, cases = cpp
    used = set()
    for case in cases:
        keys = [k for k in BUILTIN_OF_CASE if case.name.startswith(k)]
        assert len(keys) == 1, f"no built-in mapped for llama.cpp case {case.name!r}"
        name = BUILTIN_OF_CASE[keys[0]]
        t = ChatTemplate.builtin(name, bos_token=case.bos_token, eos_token=case.eos_token)
        assert t.render(_messages(conversation, case.extra)) == case.expected, (case.name, name)
        used.add(name)
    assert {"chatml", "llama3", "gemma", "phi3", "mistral-v1", "mistral-v3", "mistral-v7", "deepseek",
            "deepseek2"} <= used


def test_builtin_generation_prompt_is_optional():
    for name in BUILTINS:
        t = ChatTemplate.builtin(name)
        with_prompt, without = t.render(STANDARD, True), t.render(STANDARD, False)
        assert with_prompt.startswith(without), name


def test_builtin_names_and_errors():
    assert ChatTemplate.builtin("gemma3").name == "gemma"  # alias
    with pytest.raises(ChatTemplateError, match="unknown chat template name 'nope'.*chatml"):
        ChatTemplate.builtin("nope")


def test_system_message_merged_when_the_template_has_no_system_role():
    src = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
           "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}")
    t = ChatTemplate(src)
    assert not t.supports_system()
    assert t.render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]) == "[user]S\nU"
    with pytest.raises(ChatTemplateRaised, match="System role not supported"):  # raise_exception is typed
        ChatTemplate(src + "{{ raise_exception('System role not supported') }}").render([{"role": "user", "content": "U"}])


# -- the sandbox -----------------------------------------------------------------------------------

HOSTILE = {
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals": "{{ raise_exception.__globals__ }}",
    "cycler_globals": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "attr_filter": "{{ ''|attr('__class__')|attr('__mro__') }}",
    "format_walk": "{{ '{0.__class__.__mro__}'.format('') }}",
    "self_walk": "{{ self.__init__.__globals__ }}",
    "mutate_list": "{% set x = [] %}{{ x.append(1) }}",
    "nested_loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "big_range": "{% for i in range(10**9) %}x{% endfor %}",
    "repeat_string": "{{ 'a' * 10**9 }}",
    "repeat_list": "{{ ['a'] * 10**9 }}",
    "doubling": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "plus_doubling": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "int_squaring": "{% set ns = namespace(x=3) %}{% for i in range(100) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "power": "{{ 7 ** 100000000 }}",
    "macro_recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "loop_recursion": "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
    "center": "{{ 'x'|center(1000000000) }}",
    "center_method": "{{ 'x'.center(1000000000) }}",
    "printf": "{{ '%0999999999d' % 1 }}",
    "format_filter": "{{ '%999999999s'|format(1) }}",
    "str_format": "{{ '{:>999999999}'.format(1) }}",
    "replace_growth": "{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s|replace('a', 'aaaa') %}{% endfor %}",
    "join": "{% set big = 'a' * 1000000 %}{{ [big, big, big, big, big]|join }}",
    "set_block": "{% set big = 'a' * 1000000 %}{% set x %}{% for i in range(100000) %}{{ big }}{% endfor %}{% endset %}",
    "output": "{% for i in range(100000) %}{{ 'a' * 100000 }}{% endfor %}",
    "lipsum": "{{ lipsum(n=100000000) }}",
    "indent": "{{ ('a\\n' * 100000)|indent(100000) }}",
    "tojson_indent": "{{ range(1000)|list|tojson(indent=100000000) }}",
    "batch_fill": "{{ [1, 2]|batch(1000000000, 'x')|list|length }}",
    "slice": "{{ [1]|slice(1000000000)|list|length }}",
    "wordwrap": "{{ ('a ' * 1000000)|wordwrap(1) }}",
    "expandtabs": "{{ ('\\t' * 1000000).expandtabs(1000) }}",
    "syntax": "{% for %}",
}
HOSTILE_LIMITS = ChatLimits(seconds=0.5)
TIME_BOUND = 2.0  # seconds: the deadline plus the longest single operation between two checks, with slack


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_fails_cleanly_within_a_bound(name):
    t0 = time.perf_counter()
    with pytest.raises(ChatTemplateError) as info:
        ChatTemplate(HOSTILE[name], name=name, limits=HOSTILE_LIMITS).render([{"role": "user", "content": "hi"}])
    elapsed = time.perf_counter() - t0
    print(f"{name}: {elapsed * 1000:.1f} ms: {info.value}")
    assert elapsed < TIME_BOUND, f"{name} took {elapsed:.2f} s"
    if name in ("subclasses", "globals", "cycler_globals", "attr_filter", "format_walk", "self_walk", "mutate_list"):
        assert "unsafe" in str(info.value)


def test_hostile_templates_leave_the_sandbox_usable():
    t = ChatTemplate(HOSTILE["nested_loops"], limits=HOSTILE_LIMITS)
    for _ in range(2):  # the deadline is per render
        with pytest.raises(ChatTemplateError, match="time limit"):
            t.render([{"role": "user", "content": "hi"}])
    ok = ChatTemplate.builtin("chatml", limits=HOSTILE_LIMITS)
    assert ok.render([{"role": "user", "content": "hi"}]).startswith("<|im_start|>user\nhi")


def test_template_sees_transformers_variables():
    src = ("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools is defined }}|"
           "{{ strftime_now('%Y') }}|{{ messages|length }}|{% for m in messages %}{% if loop.last %}{{ m.content }}"
           "{% break %}{% endif %}{% endfor %}|{% generation %}g{% endgeneration %}|{{ {'a': '<é>'}|tojson }}")
    t = ChatTemplate(src, bos_token="<s>", eos_token="</s>")
    out = t.render([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}], False)
    assert out == f'<s>|</s>|False|False|{time.strftime("%Y")}|2|y|g|{{"a": "<é>"}}'


def test_trim_and_lstrip_blocks_as_transformers():
    t = ChatTemplate("{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}")
    assert t.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "a\nb\n"


@pytest.mark.parametrize("messages, match", [
    ("hello", "list"),
    ([{"role": "user"}], r"messages\[0\]\['content'\] must be a string"),
    ([{"content": "x"}], r"messages\[0\]\['role'\]"),
    ([{"role": "", "content": "x"}], "non-empty"),
    ([{"role": "user", "content": 3}], "string"),
    (["user: hi"], r"messages\[0\] must be a dict"),
    ([{"role": "user", "content": "x", "extra": object()}], "JSON-like"),
])
def test_bad_messages_are_clear_errors(messages, match):
    with pytest.raises(ChatTemplateError, match=match):
        ChatTemplate.builtin("chatml").render(messages)


def test_messages_are_copied():
    original = [{"role": "user", "content": "x", "meta": {"k": [1]}}]
    copy = validate_messages(original)
    assert copy == original and copy[0]["meta"] is not original[0]["meta"]


def test_bad_template_sources(tmp_path):
    with pytest.raises(ChatTemplateError, match="does not parse"):
        ChatTemplate("{% if %}")
    bad = tmp_path / "t.jinja"
    bad.write_bytes(b"\xff\xfe{{ x }}")
    with pytest.raises(ChatTemplateError, match="not UTF-8"):
        ChatTemplate.from_file(bad)
    with pytest.raises(ChatTemplateError, match="cannot read"):
        ChatTemplate.from_file(tmp_path / "missing.jinja")
    with pytest.raises(ChatTemplateError, match="characters"):
        ChatTemplate("x" * 100, limits=ChatLimits(max_source=10))


# -- a model: encoding, stops, sessions ------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    import realm

    model = realm.load(make_chat_model(tmp_path_factory.mktemp("chat") / "chat.gguf"))
    yield model
    model.close()


def test_for_model_uses_the_gguf_template_and_its_tokens(chat_model):
    t = ChatTemplate.for_model(chat_model)
    assert t.name.startswith("tokenizer.chat_template") and t.bos_token == "<s>" and t.eos_token == "</s>"
    assert t.end_of_turn == ("<|im_end|>",)
    im_end = chat_model.tokenizer.id_of("<|im_end|>")
    assert im_end in t.stop_ids and chat_model.tokenizer.eos_id in t.stop_ids


def test_for_model_without_a_template_says_how_to_pass_one(tmp_path):
    import realm

    with realm.load(make_chat_model(tmp_path / "base.gguf", chat_template=None)) as model:
        with pytest.raises(ChatTemplateError, match="no chat template.*--chat-template NAME.*--chat-template-file"):
            ChatTemplate.for_model(model)
        assert ChatTemplate.for_model(model, name="chatml").name == "chatml"
        f = tmp_path / "t.jinja"
        f.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
        assert ChatTemplate.for_model(model, file=f).render([{"role": "user", "content": "hi"}]) == "hi"
        with pytest.raises(ChatTemplateError, match="not both"):
            ChatTemplate.for_model(model, name="chatml", file=f)


def test_encode_parses_special_tokens_and_never_doubles_bos(chat_model):
    tok = chat_model.tokenizer
    msgs = [{"role": "user", "content": "hello"}]
    plain = ChatTemplate.for_model(chat_model)  # does not write BOS: the tokenizer adds it
    ids = plain.encode(tok, msgs)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert ids[1] == tok.id_of("<|im_start|>") and tok.id_of("<|im_end|>") in ids
    with_bos = ChatTemplate("{{ bos_token }}" + plain.source, bos_token="<s>")  # writes BOS itself
    assert with_bos.encode(tok, msgs) == ids


def test_template_end_of_turn_tokens_join_the_stop_ids():
    from realm.tokenizer import Tokenizer

    tokens = ["<unk>", "<s>", "</s>", "<|turn_end|>", "<|end|>", "a", "<|plain|>"]
    md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": np.array([2, 3, 3, 3, 3, 1, 1], np.int32)}
    tok = Tokenizer.from_metadata(md)
    assert 3 not in tok.stop_ids  # the vocabulary alone does not mark <|turn_end|>
    assert 3 in ChatTemplate.builtin("megrez").stop_ids_for(tok)
    assert 3 in ChatTemplate("{{ '<|turn_end|>' }}").stop_ids_for(tok)  # found in a template's source
    assert 6 not in ChatTemplate("{{ '<|plain|>' }}", end_of_turn=("<|plain|>",)).stop_ids_for(tok)  # not special


def test_model_chat_stops_at_end_of_turn(chat_model):
    for engine in ("reference", "wasm"):
        gen = chat_model.chat([{"role": "user", "content": "hello"}], engine=engine, max_tokens=20)
        assert "".join(gen) == "".join(REPLY)
        assert gen.stats.stop_reason == "eos" and gen.stats.generated_tokens == len(REPLY)


class RecordingEngine:
    """Wraps an engine, recording every eval's ids and logits."""

    def __init__(self, engine):
        self.inner, self.calls = engine, []

    @property
    def n_past(self):
        return self.inner.n_past

    @property
    def n_ctx(self):
        return self.inner.n_ctx

    def eval(self, ids, all_logits=False):
        logits = self.inner.eval(ids, all_logits=all_logits)
        self.calls.append((list(ids), logits))
        return logits

    def reset(self):
        self.inner.reset()

    def stats(self):
        return self.inner.stats()

    def close(self):
        self.inner.close()


def test_session_evaluates_only_new_tokens_and_matches_a_fresh_engine(chat_model):
    engine = RecordingEngine(chat_model.engine("reference"))
    session = chat_model.chat_session(engine=engine, system="Be brief.", max_tokens=8)
    template = session.template
    for turn, question in enumerate(["Hi there", "What is the capital of Italy?", "thanks"]):
        engine.calls.clear()
        before = session.n_past
        gen = session.send(question)
        assert "".join(gen) == "".join(REPLY) and gen.stats.stop_reason == "eos"
        full = template.encode(chat_model.tokenizer, session.messages[:-1])  # this turn's whole prompt
        fed, logits = engine.calls[0]
        assert session.last.reused_tokens == before == (0 if turn == 0 else len(full) - len(fed))
        assert full[before:] == fed  # exactly the new tokens
        fresh = chat_model.engine("reference")
        np.testing.assert_allclose(fresh.eval(full), logits, atol=1e-4, rtol=0)
    assert [m["role"] for m in session.messages] == ["system"] + ["user", "assistant"] * 3
    assert session.n_past == len(full) + len(REPLY)


def test_session_resets_when_history_no_longer_extends_the_cache(chat_model):
    session = chat_model.chat_session(engine="reference", max_tokens=8)
    list(session.send("first"))
    session.messages[0]["content"] = "edited"  # the cached prefix is now wrong
    gen = session.send("second")
    list(gen)
    assert session.last.reset and session.last.reused_tokens == 0
    assert gen.stats.prompt_tokens == len(session.template.encode(chat_model.tokenizer, session.messages[:-1]))
    session.reset()
    assert session.n_past == 0 and session.messages == []


def test_session_keeps_a_cancelled_reply(chat_model):
    session = chat_model.chat_session(engine="reference", max_tokens=8)
    gen = session.send("hi")
    first = next(iter(gen))
    gen.cancel()
    rest = list(gen)
    assert gen.stats.stop_reason in ("cancelled",) and first + "".join(rest) == gen.text
    assert session.messages[-1] == {"role": "assistant", "content": gen.text}
    list(session.send("again"))
    assert session.last.reused_tokens > 0


def test_stop_after_text_lets_a_blank_line_end_an_answer_that_starts_with_one(chat_model):
    tok = chat_model.tokenizer

    class Scripted:
        n_ctx = 64

        def __init__(self, script):
            self.script, self.n_past = list(script), 0

        def eval(self, ids, all_logits=False):
            self.n_past += len(ids)
            logits = np.zeros(tok.vocab_size, np.float32)
            logits[self.script.pop(0)] = 1.0
            return logits

        def stats(self):
            return {}

    nl = tok.id_of("<0x0A>")
    script = [nl, nl, tok.id_of("\u2581hello"), nl, nl, tok.id_of("\u2581world")]
    for after, expected in ((True, "\n\n hello"), (False, "")):
        gen = Generation(Scripted(script), tok, [1], max_tokens=6, sampling=SamplingParams(), stop=("\n\n",),
                         stop_after_text=after)
        assert "".join(gen) == expected and gen.stats.stop_reason == "stop_string"


def test_gemma_builtin_renders_the_default_models_turns_as_llama_cpp(default_model, cpp):
    import realm

    conversation, cases = cpp
    expected = next(c.expected for c in cases if c.name == "google/gemma-7b-it")
    with realm.load(default_model) as model:
        t = ChatTemplate.for_model(model, name="gemma")
        assert t.render(conversation) == expected
        ids = t.encode(model.tokenizer, conversation)
        assert ids == model.tokenizer.encode(expected, add_bos=True, special=True)
        assert ids.count(model.tokenizer.bos_id) == 1
        assert model.tokenizer.id_of("<end_of_turn>") in t.stop_ids
        assert ids[1] == model.tokenizer.id_of("<start_of_turn>")
