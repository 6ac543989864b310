"""BPE pre-tokenizers: `tokenizer.ggml.pre` -> a family of word-splitting regexes plus tokenizer flags.

Facts from llama.cpp's src/llama-vocab.cpp (llm_tokenizer_bpe, llama_vocab::impl::load) and
src/unicode.cpp (unicode_regex_split), as vendored in llama-cpp-python 0.3.36:
https://github.com/ggml-org/llama.cpp/blob/0c1e57098/src/llama-vocab.cpp and .../src/unicode.cpp

How a text is split (`PreTokenizer.split`): the regexes of the family run one after the other, each
splitting every piece the previous one left (the first sees the whole fragment); within a piece the
matches and the unmatched gaps between them all become pieces. The regexes are llama.cpp's strings
(ECMAScript syntax, which `re` reads the same for these patterns) run in one of three ways:

* custom: the ones llama.cpp recognises by their exact text and runs as hand-written splitters
  (gpt2, llama3, qwen2, qwen35, newlines, digit groups, kimi-k2). They behave as the regex they name,
  except that code points that match none of its alternatives become one piece each; here each is a
  `re` pattern with llama.cpp's exact classes (\\p{L}, \\p{N}, \\p{M} and \\s from unicode_tables.py);
* collapsed: a regex using \\p{..}: it runs over llama.cpp's "collapsed" text (every non-ASCII code
  point replaced by a placeholder for its category, non-ASCII whitespace by \\v) with \\p{X} rewritten
  to [placeholder + X's ASCII members] and ASCII-only \\s, \\d;
* plain: any other regex runs over the text with non-ASCII whitespace replaced by \\v.

`$` means end of piece (ECMAScript), written `\\Z` for `re`.

Flags on top of the BPE defaults (clean_spaces on, add_bos/ignore_merges/escape_whitespaces off):

| family (llama.cpp pre type)     | regexes                                   | pre values (flags)                       |
| ------------------------------- | ----------------------------------------- | ---------------------------------------- |
| llama3                          | llama3 custom                             | llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano (ignore_merges, add_bos); dbrx smaug-bpe; chatglm-bpe (no BOS id); glm4 glm5 (no BOS id, ignore_merges) |
| gpt2                            | gpt2 custom                               | gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert mpt olmo jais exaone4; jina-v1-en jina-v2-code roberta-bpe (add_sep); trillion granite-docling (no clean) |
| default                         | punctuation runs, gpt2, \\p{N}+, 3 digits | missing pre (warned), default            |
| starcoder (digits split)        | \\p{N}, gpt2                              | starcoder refact codeshell exaone minerva-7b mellum2; command-r smollm (no clean) |
| falcon                          | punctuation runs, gpt2, 3 digits          | falcon                                   |
| qwen2                           | qwen2 custom                              | qwen2 deepseek-r1-qwen kormo f2llmv2 hunyuan solar-open grok-2 (no clean); stablelm2 megrez |
| qwen35                          | qwen35 custom (letters take marks)        | qwen35 (no clean)                        |
| deepseek-llm / deepseek-coder   | newline, letter, punctuation, CJK, digit  | deepseek-llm, deepseek-coder (no clean)  |
| deepseek3                       | 3 digits, CJK, words                      | deepseek-v3 hunyuan-dense hy_v4 joyai-llm (no clean); spark2_5 (variant) |
| gemma4 (SPM-style BPE)          | newlines custom; raw UTF-8, no byte map   | gemma4 granite-embed-multi-311m (escape_whitespaces, BOS forced); sarvam-moe (no clean) |
| gpt4o                           | case-aware words, 3 digits                | gpt-4o llama4 kanana2 talkie minimax-m2 (no clean); granite-embed-multi-97m (with marks, ignore_merges) |
| others, one each                |                                           | jais-2, youtu, poro-chat/bloom/gpt3-finnish, viking, tekken (ignore_merges, add_bos), chameleon (add_bos), tiny_aya/cohere2moe, superbpe, bailingmoe/bailingmoe2/llada-moe, seed-coder, ufakzeka, afmoe, laguna, exaone-moe, minicpm5 (ignore_merges), kimi-k2, whitespace |
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

from realm.errors import UnsupportedError
from realm.tokenizer import unicode as U

log = logging.getLogger(__name__)

# -- the regexes, spelled as llama.cpp spells them ------------------------------------------------------

_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
LLAMA3 = (_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
          "|\\s+(?!\\S)|\\s+")
QWEN2 = (_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
         "|\\s+(?!\\S)|\\s+")
QWEN35 = (_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*"
          "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
NEWLINES = "[^\\n]+|[\\n]+"
KIMI_K2 = "\\p{Han}+"
DIGIT_GROUPS = "\\p{AFMoE_digits}"
TINY_AYA_DIGITS = "\\d{1,3}(?=(?:\\d{3})*\\b)"  # llama.cpp runs its digit-group splitter for this one

_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_GPT4O_WORDS = ("[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+" + _CONTRACTIONS + "?"
                "|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*" + _CONTRACTIONS + "?"
                "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_CASED_WORDS = ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
                + _CONTRACTIONS + "?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
                "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*" + _CONTRACTIONS + "?")
_DEEPSEEK3_WORDS = ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
                    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")
# AFMoE's spelling of the same (regex escapes \\r\\n where deepseek3 has the characters)
_AFMOE_WORDS = _DEEPSEEK3_WORDS.replace("\r", "\\r").replace("\n", "\\n")

# family -> (regexes in order, byte_encode). byte_encode False: words stay raw UTF-8 (SPM-style BPE
# vocabularies with <0xXX> byte tokens) instead of GPT-2's byte-to-printable mapping.
FAMILIES: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": (("[\\p{P}\\$\\+<=>\\^~\\|]+", GPT2, "\\p{N}+", "[0-9][0-9][0-9]"), True),
    "llama3": ((LLAMA3,), True),
    "gpt2": ((GPT2,), True),
    "starcoder": (("\\p{N}", GPT2), True),
    "falcon": (("[\\p{P}\\$\\+<=>\\^~\\|`]+", GPT2, "[0-9][0-9][0-9]"), True),
    "qwen2": ((QWEN2,), True),
    "qwen35": ((QWEN35,), True),
    "deepseek-llm": (("[\r\n]",
                      "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
                      "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+", "\\s+$", _CJK, "\\p{N}+"), True),
    "deepseek-coder": (("[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", _CJK, "\\p{N}"), True),
    "deepseek3": (("\\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+", _DEEPSEEK3_WORDS), True),
    "spark2_5": (("\\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                  "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
                  "| ?[\\p{P}\\p{S}]+|[\r\n]|\\s+(?!\\S)|\\s+", "\\p{N}"), True),
    "youtu": (("[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
               _CASED_WORDS + "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"), True),
    "jais2": ((_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
               "|\\s{512}(?!\\S)|\\s{256}(?!\\S)|\\s{128}(?!\\S)|\\s{64}(?!\\S)|\\s{32}(?!\\S)|\\s{16}(?!\\S)"
               "|\\s{8}(?!\\S)|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}",), True),
    "bloom": ((" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+",), True),
    "viking": ((" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+", "\\p{N}"), True),
    "tekken": (("[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+"
                "|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*"
                "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",), True),
    "chameleon": (("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", "\\p{N}",
                   "[\\p{P}!-/:-@\\[-`{-~]", GPT2), True),
    "gpt4o": ((_GPT4O_WORDS,), True),
    "granite-emb-multi": ((_GPT4O_WORDS.replace("(?=[\\p{L}])", "(?=[\\p{L}\\p{M}])"),), True),
    "tiny_aya": ((TINY_AYA_DIGITS, _CASED_WORDS + "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+"
                  "|\\s+(?!\\S)|\\s+"), True),
    "kimi-k2": ((KIMI_K2,), True),
    "superbpe": (("\\p{N}+", "(?=(\\d{3})+(?!\\d))"), True),
    "bailingmoe": (("'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
                    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",), True),
    "seed-coder": ((_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+"
                    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",), True),
    "ufakzeka": (("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",),
                 True),
    "afmoe": ((DIGIT_GROUPS, "[\u4e00-\u9fff\u3400-\u4dbf\u8c48-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af\u1100-\u11ff]+", _AFMOE_WORDS),
              True),
    "laguna": ((NEWLINES, QWEN2), True),
    "exaone-moe": ((_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}"
                    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",), True),
    "gemma4": ((NEWLINES,), False),
    "minicpm5": (("\\p{N}{1,3}", _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                  "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"), True),
    "whitespace": (("\\S+",), False),
}

NO_CLEAN = {"clean_spaces": False}

# (pre values, family, flags different from the BPE defaults). Spelled as llama.cpp's loader spells them.
_PRE_VALUES: tuple[tuple[tuple[str, ...], str, dict[str, bool]], ...] = (
    (("default",), "default", {}),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
     "llama3", {"ignore_merges": True, "add_bos": True}),
    (("dbrx", "smaug-bpe"), "llama3", {}),
    (("chatglm-bpe",), "llama3", {"no_bos": True}),
    (("glm4", "glm5"), "llama3", {"no_bos": True, "ignore_merges": True}),
    (("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
      "modern-bert", "mpt", "olmo", "jais", "exaone4"), "gpt2", {}),
    (("jina-v1-en", "jina-v2-code", "roberta-bpe"), "gpt2", {"add_sep": True}),
    (("trillion", "granite-docling"), "gpt2", NO_CLEAN),
    (("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"), "starcoder", {}),
    (("command-r", "smollm"), "starcoder", NO_CLEAN),
    (("falcon",), "falcon", {}),
    (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open"), "qwen2", NO_CLEAN),
    (("grok-2",), "qwen2", NO_CLEAN),
    (("stablelm2", "megrez"), "qwen2", {}),
    (("qwen35",), "qwen35", NO_CLEAN),
    (("deepseek-llm",), "deepseek-llm", NO_CLEAN),
    (("deepseek-coder",), "deepseek-coder", NO_CLEAN),
    (("deepseek-v3", "hunyuan-dense", "hy_v4", "joyai-llm"), "deepseek3", NO_CLEAN),
    (("spark2_5",), "spark2_5", NO_CLEAN),
    (("youtu",), "youtu", {"clean_spaces": False, "ignore_merges": True}),
    (("jais-2",), "jais2", {}),
    (("gemma4", "granite-embed-multi-311m"), "gemma4",
     {"escape_whitespaces": True, "force_bos": True, "newline_words": True}),
    (("sarvam-moe",), "gemma4", {"escape_whitespaces": True, "clean_spaces": False}),
    (("poro-chat",), "bloom", NO_CLEAN),
    (("bloom", "gpt3-finnish"), "bloom", {}),
    (("viking",), "viking", NO_CLEAN),
    (("tekken",), "tekken", {"clean_spaces": False, "ignore_merges": True, "add_bos": True}),
    (("chameleon",), "chameleon", {"clean_spaces": False, "add_bos": True}),
    (("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), "gpt4o", NO_CLEAN),
    (("granite-embed-multi-97m",), "granite-emb-multi", {"clean_spaces": False, "ignore_merges": True}),
    (("tiny_aya", "cohere2moe"), "tiny_aya", NO_CLEAN),
    (("superbpe",), "superbpe", NO_CLEAN),
    (("bailingmoe", "bailingmoe2", "llada-moe"), "bailingmoe", NO_CLEAN),
    (("seed-coder",), "seed-coder", NO_CLEAN),
    (("kimi-k2",), "kimi-k2", NO_CLEAN),
    (("ufakzeka",), "ufakzeka", NO_CLEAN),
    (("afmoe",), "afmoe", NO_CLEAN),
    (("laguna",), "laguna", NO_CLEAN),
    (("exaone-moe",), "exaone-moe", {}),
    (("minicpm5",), "minicpm5", {"ignore_merges": True}),
    (("whitespace",), "whitespace", {}),
)

PRE_VALUES: dict[str, tuple[str, dict[str, bool]]] = {
    name: (family, flags) for names, family, flags in _PRE_VALUES for name in names
}
assert len(PRE_VALUES) == sum(len(names) for names, _, _ in _PRE_VALUES), "a pre value listed twice"
assert {family for family, _ in PRE_VALUES.values()} == set(FAMILIES)


@dataclass(frozen=True)
class PreTokenizer:
    """What one `tokenizer.ggml.pre` value means: the family's regexes and the tokenizer flags.

    no_bos: the loader clears the default BOS id (chatglm); force_bos: add_bos is forced on (gemma4);
    newline_words: a word of newlines only is one token when the vocabulary has it (gemma4);
    add_sep: llama.cpp appends SEP with add_special (not applied by realm's encode, like add_eos).
    """

    pre: str
    family: str
    regexes: tuple[str, ...]
    byte_encode: bool
    clean_spaces: bool = True
    ignore_merges: bool = False
    add_bos: bool = False
    escape_whitespaces: bool = False
    no_bos: bool = False
    force_bos: bool = False
    newline_words: bool = False
    add_sep: bool = False

    @classmethod
    def named(cls, pre: str | None) -> PreTokenizer:
        """The pre-tokenizer of a `tokenizer.ggml.pre` value (None: missing, llama.cpp's "default")."""
        if pre is None:
            log.warning("tokenizer.ggml.pre is missing: using the 'default' pre-tokenizer, as llama.cpp does "
                        "(generation quality may be degraded; consider regenerating the GGUF)")
            pre = "default"
        hit = PRE_VALUES.get(pre)
        if hit is None:
            raise UnsupportedError(f"unsupported BPE pre-tokenizer tokenizer.ggml.pre = {pre!r}")
        family, flags = hit
        regexes, byte_encode = FAMILIES[family]
        return cls(pre, family, regexes, byte_encode, **flags)

    def split(self, text: str) -> list[str]:
        """`text` -> its words (llama.cpp's unicode_regex_split, before byte encoding)."""
        pieces = [text] if text else []
        for regex in self.regexes:
            run = _splitter(regex)
            out: list[str] = []
            for piece in pieces:
                out.extend(run(piece))
            pieces = out
        return pieces


# -- running one regex ------------------------------------------------------------------------------------

def _py_classes(pattern: str, body, space: str | None = None) -> str:
    """Rewrite \\p{X} (inside or outside [...]) with `body(X)`, and \\s, \\S with the class body `space`
    if given; `$` outside classes -> \\Z."""
    out = []
    i, inside = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and pattern.startswith("\\p{", i):
            end = pattern.index("}", i)
            b = body(pattern[i + 3:end])
            out.append(b if inside else f"[{b}]")
            i = end + 1
            continue
        if c == "\\":
            esc = pattern[i:i + 2]
            if space is not None and esc in ("\\s", "\\S"):
                esc = space if inside else ("[" if esc == "\\s" else "[^") + space + "]"
                assert not (inside and pattern[i + 1] == "S")
            out.append(esc)
            i += 2
            continue
        if c == "[" and not inside:
            inside = True
        elif c == "]" and inside:
            inside = False
        elif c == "$" and not inside:
            c = "\\Z"
        out.append(c)
        i += 1
    return "".join(out)


def _collapsed_body(name: str) -> str:
    cat = U.CATEGORY_OF_NAME.get(name)
    if cat is None:
        raise UnsupportedError(f"pre-tokenizer regex class \\p{{{name}}} is not supported")
    return U.COLLAPSED_CHAR[cat] + U.COLLAPSED_ASCII[cat]


def _pieces(text: str, view: str, regex: re.Pattern[str]) -> list[str]:
    """Matches of `regex` in `view` (a same-length stand-in for `text`) and the gaps between them, as
    slices of `text`; empty matches yield nothing."""
    out: list[str] = []
    pos = 0
    for m in regex.finditer(view):
        a, b = m.span()
        if a > pos:
            out.append(text[pos:a])
        if b > a:
            out.append(text[a:b])
        pos = max(pos, b)
    if pos < len(text):
        out.append(text[pos:])
    return out


@functools.cache
def _splitter(regex: str):
    """The function splitting one piece by `regex`, as llama.cpp would run it."""
    custom = _CUSTOM.get(regex)
    if custom is not None:
        return custom()
    if "\\p{" in regex:
        compiled = re.compile(_py_classes(regex, _collapsed_body), re.ASCII)
        return lambda text: _pieces(text, U.collapse(text), compiled)
    compiled = re.compile(_py_classes(regex, _collapsed_body), re.ASCII)
    return lambda text: _pieces(text, U.ascii_whitespace(text), compiled)


def _custom_regex(pattern: str):
    """A custom splitter written as a `re` pattern over the raw text, with llama.cpp's exact classes;
    any code point it cannot match becomes a piece of its own (the patterns match every code point,
    so this is a guard)."""
    compiled = re.compile(_py_classes(pattern, U.class_body, U.class_body("s")))

    def run(text: str) -> list[str]:
        out: list[str] = []
        pos = 0
        for m in compiled.finditer(text):
            a, b = m.span()
            out.extend(text[pos:a])  # one piece per unmatched code point
            if b > a:
                out.append(text[a:b])
            pos = max(pos, b)
        out.extend(text[pos:])
        return out

    return run


def _digit_groups():
    """llama.cpp's AFMoE digit splitter: every run of numbers is cut into groups of three from the
    right (1234567 -> 1 234 567); no cut before the run, so preceding text joins its first group."""
    number = U.NUMBER

    def run(text: str) -> list[str]:
        if not text:
            return []
        cats = U.categories()[U._codepoints(text)] & number
        cuts = []
        i, n = 0, len(text)
        while i < n:
            if not cats[i]:
                i += 1
                continue
            j = i
            while j < n and cats[j]:
                j += 1
            at = i + (j - i) % 3
            if at > i:
                cuts.append(at)
            cuts.extend(range(at + 3, j + 1, 3))
            i = j
        if not cuts or cuts[-1] != n:
            cuts.append(n)
        out, prev = [], 0
        for c in cuts:
            if c > prev:
                out.append(text[prev:c])
            prev = c
        return out

    return run


def _newlines():
    compiled = re.compile("[^\n]+|\n+")
    return lambda text: compiled.findall(text)


# exact regex text -> the custom splitter llama.cpp runs for it (unicode_regex_split_custom)
_CUSTOM = {
    GPT2: lambda: _custom_regex(GPT2 + "|\\s+"),
    LLAMA3: lambda: _custom_regex(LLAMA3),
    QWEN2: lambda: _custom_regex(QWEN2),
    QWEN35: lambda: _custom_regex(QWEN35),
    NEWLINES: _newlines,
    DIGIT_GROUPS: _digit_groups,
    TINY_AYA_DIGITS: _digit_groups,
    KIMI_K2: lambda: _custom_regex(
        "\\p{Han}+|[^\\r\\n\\p{L}\\p{N}]?\\p{LnH}+" + _CONTRACTIONS + "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
        "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
}
