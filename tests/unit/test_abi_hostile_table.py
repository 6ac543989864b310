"""The shared table of hostile host-function calls (tests/data/abi_hostile_calls.json), run against the
Python host through the proxy guest; js/test/abi.test.js runs the same table against the JavaScript
host, so both hosts give the same code for every case. Also: js/src/abi_table.js is the generated
image of realm.host.abi (error codes, struct layouts), the one source the JavaScript host loads."""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

import pytest

pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from js_fixtures import HOSTILE_TABLE, write_fixtures  # noqa: E402

from realm.host import abi, abi_table  # noqa: E402
from realm.host.runtime import Guest  # noqa: E402
from realm.host.store import ModelStore  # noqa: E402

PROXY = (ROOT / "tests" / "security" / "wat" / "proxy.wat").read_text()
TABLE = json.loads(HOSTILE_TABLE.read_text())


def test_js_abi_table_is_generated_from_abi_py():
    committed = (ROOT / "js" / "src" / "abi_table.js").read_text()
    assert committed == abi_table.dumps(), "js/src/abi_table.js is stale: run python3 -m realm.host.abi_table"


def test_abi_table_layouts_match_the_structs():
    t = abi_table.table()
    assert t["errors"] == abi.ERRORS
    info = t["structs"]["TensorInfo"]
    assert info["size"] == 48 and [f["offset"] for f in info["fields"]] == [0, 4, 8, 40]
    cfg = t["structs"]["ModelConfigABI"]
    assert cfg["size"] == abi.MODEL_CONFIG_SIZE
    # every field's offset agrees with packing a recognisable value through realm.host.abi
    params = abi.pack_sample_params({"temperature": 0.5, "top_k": 7, "top_p": 0.25, "min_p": 0.125,
                                     "repeat_penalty": 2.0, "repeat_last_n": 33}, 0x0102030405060708)
    fields = {f["name"]: f for f in t["structs"]["SampleParams"]["fields"]}
    assert struct.unpack_from("<i", params, fields["top_k"]["offset"])[0] == 7
    assert struct.unpack_from("<f", params, fields["min_p"]["offset"])[0] == 0.125
    assert struct.unpack_from("<Q", params, fields["rng_state"]["offset"])[0] == 0x0102030405060708
    assert t["ggml_types"]["Q4_K"] == {"id": 12, "block_size": 256, "type_size": 144, "supported": True}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = write_fixtures(tmp_path_factory.mktemp("jsfx"), with_greedy=False)
    info = json.loads((d / "tiny-llama.json").read_text())
    store = ModelStore()
    held = store.add(d / "tiny-llama.gguf")
    foreign = store.add(d / "tiny-llama-foreign.gguf")
    g = Guest(PROXY, model_store=store)
    g.acquire(held)
    other = Guest(PROXY, model_store=store)
    other.acquire(foreign)
    yield {"g": g, "held": held, "foreign": foreign, "info": info, "raw": (d / "tiny-llama.gguf").read_bytes()}
    g.close()
    other.close()
    store.close()


def resolve(expr, w, name_len: int) -> int:
    """A table value: an int, or a sum of terms (symbols, k*symbol, ints) as documented in the table."""
    if isinstance(expr, int):
        return expr
    info, addr = w["info"], TABLE["addresses"]
    total = 0
    for sign, term in re.findall(r"([+-]?)([^+-]+)", expr):
        k, _, sym = term.rpartition("*")
        if re.fullmatch(r"\d+", sym):
            v = int(sym)
        elif sym == "HELD":
            v = w["held"]
        elif sym == "FOREIGN":
            v = w["foreign"]
        elif sym == "MEM":
            v = TABLE["memory_bytes"]
        elif sym == "NAME_LEN":
            v = name_len
        elif sym == "NTENSORS":
            v = len(info["tensors"])
        elif m := re.fullmatch(r"NBYTES(\d+)", sym):
            v = info["tensors"][int(m.group(1))]["n_bytes"]
        elif m := re.fullmatch(r"NELEMENTS\((.+)\)", sym):
            v = next(t["n_elements"] for t in info["tensors"] if t["name"] == m.group(1))
        else:
            v = addr[sym]
        v *= int(k) if k else 1
        total += -v if sign == "-" else v
    return total


def _s32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x


@pytest.mark.parametrize("case", TABLE["cases"], ids=[c["id"] for c in TABLE["cases"]])
def test_hostile_call(world, case):
    g = world["g"]
    name = bytes.fromhex(case["name_hex"]) if "name_hex" in case else case.get("name", "").encode()
    g.write(TABLE["addresses"]["NAME"], name)
    reqs = b"".join(abi.READ_REQ.pack(*(_s32(resolve(v, world, len(name))) if i != 2 else resolve(v, world, len(name))
                                        for i, v in enumerate(r)))
                    for r in case.get("reqs", []))
    if reqs:
        g.write(TABLE["addresses"]["REQS"], reqs)
    params, _ = abi.HOST_FUNCTIONS[case["fn"]]
    args = [resolve(a, world, len(name)) for a in case["args"]]
    args = [_s32(a) if p == "i32" else a for a, p in zip(args, params)]
    expect = case["expect"]
    want = abi.ERRORS[expect] if isinstance(expect, str) and expect.startswith("ERR_") else resolve(expect, world, len(name))
    rc = g.call("call_" + case["fn"], *args)
    assert rc == want, f"{case['id']}: got {abi.code_name(rc) if rc < 0 else rc}, want {expect}"
    info = world["info"]
    if case.get("check_bytes"):
        t = info["tensors"][0]
        assert g.read(TABLE["addresses"]["BIG"], t["n_bytes"]) == world["raw"][t["data_offset"]:t["data_offset"] + t["n_bytes"]]
    if case.get("check_config"):
        assert g.read(TABLE["addresses"]["OUT"], 128).hex() == info["config_hex"]
    if case.get("check_info"):
        out = TABLE["addresses"]["OUT"]
        count, = struct.unpack("<I", g.read(out, 4))
        total, = struct.unpack("<Q", g.read(out + 8, 8))
        assert (count, total) == (len(info["tensors"]), sum(t["n_bytes"] for t in info["tensors"]))
