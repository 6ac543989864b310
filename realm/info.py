"""`realm info`: a summary of a GGUF file (header, hyperparameters, quantization mix, tensor index).

Reads only what `GGUFFile` already validated; every model field is optional, so vocab-only and
incomplete files summarize with None where a value is missing or has an unexpected type.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from realm.gguf import GGUFFile


def _int_field(md: dict[str, Any], key: str) -> int | list[int] | None:
    """An integer hyperparameter; per-layer arrays collapse to one int when all equal."""
    v = md.get(key)
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, np.ndarray) and v.ndim == 1 and v.size and np.issubdtype(v.dtype, np.integer):
        values = [int(x) for x in v]
        return values[0] if len(set(values)) == 1 else values
    return None


def _str_field(md: dict[str, Any], key: str) -> str | None:
    v = md.get(key)
    return v if isinstance(v, str) else None


def summarize(gguf_file: GGUFFile) -> dict[str, Any]:
    """Plain-data summary of an open GGUFFile (JSON-serializable)."""
    md = gguf_file.metadata
    arch = _str_field(md, "general.architecture")

    def hp(name: str) -> int | list[int] | None:
        return _int_field(md, f"{arch}.{name}") if arch else None

    tokens = md.get("tokenizer.ggml.tokens")
    vocab_size = len(tokens) if isinstance(tokens, list) else hp("vocab_size")

    quantization: dict[str, dict[str, int]] = {}
    n_parameters = 0
    tensors = []
    for t in gguf_file.tensors.values():
        n_parameters += t.n_elements
        q = quantization.setdefault(t.ggml_type.name, {"tensors": 0, "bytes": 0})
        q["tensors"] += 1
        q["bytes"] += t.n_bytes
        tensors.append({"name": t.name, "type": t.ggml_type.name, "shape": list(t.shape), "n_bytes": t.n_bytes})
    quantization = dict(sorted(quantization.items(), key=lambda kv: -kv[1]["bytes"]))

    return {
        "path": str(gguf_file.path) if gguf_file.path is not None else None,
        "file_size": gguf_file.file_size,
        "version": gguf_file.version,
        "alignment": gguf_file.alignment,
        "n_metadata": len(md),
        "architecture": arch,
        "name": _str_field(md, "general.name"),
        "n_parameters": n_parameters,
        "n_tensors": len(tensors),
        "tensor_bytes": sum(t["n_bytes"] for t in tensors),
        "quantization": quantization,
        "context_length": hp("context_length"),
        "dim": hp("embedding_length"),
        "hidden_dim": hp("feed_forward_length"),
        "n_layers": hp("block_count"),
        "n_heads": hp("attention.head_count"),
        "n_kv_heads": hp("attention.head_count_kv"),
        "vocab_size": vocab_size,
        "tokenizer": _str_field(md, "tokenizer.ggml.model"),
        "tensors": tensors,
    }


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _count(n: int) -> str:
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit} ({n:,})"
    return str(n)


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)


def format_summary(summary: dict[str, Any], show_tensors: bool = False) -> str:
    """Aligned human-readable text of a `summarize()` result; with the tensor table if asked."""
    s = summary
    rows = [
        ("file", s["path"] if s["path"] is not None else "<in-memory image>"),
        ("size", f"{_bytes(s['file_size'])} ({s['file_size']:,} bytes)"),
        ("gguf version", f"{s['version']} (alignment {s['alignment']}, {s['n_metadata']} metadata keys)"),
        ("architecture", _value(s["architecture"])),
        ("name", _value(s["name"])),
        ("parameters", _count(s["n_parameters"])),
        ("tensors", f"{s['n_tensors']} ({_bytes(s['tensor_bytes'])})"),
        ("context length", _value(s["context_length"])),
        ("embedding length", _value(s["dim"])),
        ("feed-forward length", _value(s["hidden_dim"])),
        ("layers", _value(s["n_layers"])),
        ("heads", _value(s["n_heads"])),
        ("kv heads", _value(s["n_kv_heads"])),
        ("vocab size", _value(s["vocab_size"])),
        ("tokenizer", _value(s["tokenizer"])),
    ]
    quant = s["quantization"]
    if quant:
        width = max(len(k) for k in quant)
        total = max(s["tensor_bytes"], 1)
        for i, (qname, q) in enumerate(quant.items()):
            line = (f"{qname:<{width}}  {q['tensors']:>4} tensors  {_bytes(q['bytes']):>10}  "
                    f"{100 * q['bytes'] / total:5.1f}%")
            rows.append(("quantization" if i == 0 else "", line))
    else:
        rows.append(("quantization", "-"))
    label_width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{label_width}}  {value}".rstrip() for label, value in rows]

    if show_tensors and s["tensors"]:
        table = [("name", "type", "shape", "bytes")] + [
            (t["name"], t["type"], "x".join(str(d) for d in t["shape"]), f"{t['n_bytes']:,}") for t in s["tensors"]]
        widths = [max(len(r[c]) for r in table) for c in range(4)]
        lines.append("")
        for r in table:
            lines.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}")
    return "\n".join(lines)
