"""`python -m realm bench` on a tiny synthetic model: the report's structure, and numbers that were measured."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
from click.testing import CliRunner

from realm.cli import main
from realm.quants import GGMLType

synth = pytest.importorskip("synth")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return synth.make_model(tmp_path_factory.mktemp("bench") / "tiny.gguf", arch="llama", qtype=GGMLType.Q8_0)


def numbers(obj, path=""):
    """Every numeric leaf of a JSON object, with its path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def test_bench_cli_writes_a_measured_report(tiny_model, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--model", str(tiny_model), "--engines", "wasm,numba,reference",
                                       "--threads", "1,2", "--prompt-tokens", "12", "--gen-tokens", "4",
                                       "--repeat", "2", "--no-startup", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.json").exists() and (out / "report.md").exists()
    report = json.loads((out / "report.json").read_text())

    from realm.host.runtime import available_runtimes

    labels = [r["label"] for r in report["runs"]]
    runtimes = available_runtimes()  # the default --runtime all: a row per installed runtime
    assert any(label.startswith("numba[1 thread") for label in labels)
    assert any(label.startswith("numba[2 threads") for label in labels)
    for rt in runtimes:
        assert any(label.startswith(f"wasm ({rt})[64 MiB") for label in labels), (rt, labels)
        assert any(label.startswith(f"wasm ({rt})[resident") for label in labels), (rt, labels)
    assert {r["runtime"] for r in report["runs"] if r["engine"] == "wasm"} == set(runtimes)
    assert "reference" in labels

    for path, value in numbers(report):
        assert math.isfinite(value), f"{path} = {value}"
    assert report["bandwidth"]["read_gbps"] > 0 and report["bandwidth"]["copy_gbps"] > 0
    for run in report["runs"]:
        for key in ("prefill_tps", "decode_tps"):
            s = run[key]
            assert s["n"] == 2 and 0 < s["min"] <= s["median"] <= s["max"], (run["label"], key, s)
        assert run["decode_gbps"] > 0 and run["create_seconds"] > 0
    guest = [r for r in report["runs"] if r["engine"] == "wasm"]
    assert all(r["engine_stats"]["peak_memory"] > 0 for r in guest)
    assert all("host_calls_per_token" in r for r in guest)
    assert report["host_call"]["us_per_call"] > 0 and report["host_call"]["calls"] > 0
    assert set(report["host_calls"]) == set(runtimes)
    assert all(hc["us_per_call"] > 0 for hc in report["host_calls"].values())
    # independent recomputation of the bytes a decode step reads
    from realm.gguf import GGUFFile

    with GGUFFile(tiny_model) as g:
        expected = sum(t.n_bytes for n, t in g.tensors.items() if n != "token_embd.weight")
        emb = g.tensors["token_embd.weight"]
        expected += emb.n_bytes // emb.shape[0] + (emb.n_bytes if "output.weight" not in g.tensors else 0)
    assert report["model"]["weight_bytes_per_token"] == expected
    agree = report["agreement"]
    assert set(agree) == {f"wasm ({rt}) vs reference" for rt in runtimes} | {"numba vs reference"}
    for a in agree.values():
        assert a["positions"] == 12 and a["top1_agreement"] >= 0.9 and a["max_abs_diff"] < 0.1
    md = (out / "report.md").read_text()
    for run in report["runs"]:
        assert run["label"] in md
    for rt in runtimes:
        assert f"timed in a guest loop) under {rt} costs" in md
    assert "nan" not in md.lower()
    assert "wrote" in result.output
    if importlib.util.find_spec("matplotlib") is not None:  # the chart is optional; the dev extra installs it
        png = (out / "report.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_bench_runs_each_engine_in_its_own_process_unless_asked(tiny_model, tmp_path):
    """By default every engine variant is created and timed in a worker process of its own
    (realm.bench_local, which reports the worker's pid); --in-process keeps them in this one."""
    import os

    pids = {}
    for flag in ([], ["--in-process"]):
        out = tmp_path / ("in" if flag else "iso")
        result = CliRunner().invoke(main, ["bench", "--model", str(tiny_model), "--engines", "wasm,numba", "--threads", "1",
                                           "--runtime", "wasmtime", "--prompt-tokens", "6", "--gen-tokens", "2",
                                           "--repeat", "1", "--no-startup", "--out", str(out), *flag])
        assert result.exit_code == 0, result.output
        report = json.loads((out / "report.json").read_text())
        pids[bool(flag)] = [r["engine_stats"].get("pid") for r in report["runs"]]
    isolated = pids[False]
    assert None not in isolated and os.getpid() not in isolated and len(set(isolated)) == len(isolated), isolated
    assert pids[True] == [None] * len(pids[True])


def test_wasm_startup_is_measured_in_fresh_processes():
    from realm.bench import startup_times
    from realm.host.runtime import available_runtimes

    for rt in available_runtimes():
        s = startup_times("wasm", rt)
        assert s is not None and "error" not in s, s
        assert s["cold_seconds"] > 0 and s["cached_seconds"] > 0
        assert s["runtime"] == rt  # the fresh process compiled with the runtime asked for


@pytest.mark.parametrize("interleave", [True, False])
def test_bench_interleaves_repeats_across_engines(tiny_model, interleave):
    """Interleaved: repeat i of every engine runs before repeat i + 1 of any; sequential: one engine
    is created, measured and closed before the next is created."""
    from realm.bench import BenchSettings, run_bench

    events: list[str] = []
    settings = BenchSettings(model=str(tiny_model), engines=("wasm", "numba"), threads=(1,), prompt_tokens=6,
                             gen_tokens=2, repeat=2, startup=False, budgets=("default",), interleave=interleave,
                             runtimes=("auto",))  # one wasm row whatever is installed
    report = run_bench(settings, progress=events.append)
    runs = [e for e in events if ": run " in e or e.endswith(": creating engine")]
    order = [(e.split(":")[0], "create" if e.endswith("creating engine") else e.split("run ")[1][:3]) for e in runs]
    labels = [r["label"] for r in report["runs"]]
    assert len(labels) == 2
    if interleave:
        assert order == [(labels[0], "create"), (labels[1], "create"), (labels[0], "1/2"), (labels[1], "1/2"),
                         (labels[0], "2/2"), (labels[1], "2/2")]
    else:
        assert order == [(labels[0], "create"), (labels[0], "1/2"), (labels[0], "2/2"),
                         (labels[1], "create"), (labels[1], "1/2"), (labels[1], "2/2")]
    assert all(r["decode_tps"]["n"] == 2 for r in report["runs"])
    assert report["settings"]["interleave"] is interleave


def test_llama_cpp_ratios_pair_runs_by_thread_count():
    from realm.bench import llama_cpp_ratios

    def run(engine, label, threads, prefill, decode):
        return {"engine": engine, "label": label, "threads": threads,
                "prefill_tps": {"median": prefill}, "decode_tps": {"median": decode}}

    runs = [run("numba", "numba[1 thread]", 1, 50.0, 10.0), run("numba", "numba[2 threads]", 2, 90.0, 30.0),
            run("llama.cpp", "llama.cpp[1 thread]", 1, 100.0, 20.0),
            run("llama.cpp", "llama.cpp[2 threads]", 2, 100.0, 40.0), run("reference", "reference", None, 1.0, 1.0)]
    ratios = {x["label"]: x for x in llama_cpp_ratios(runs)}
    assert set(ratios) == {"numba[1 thread]", "numba[2 threads]"}
    assert ratios["numba[1 thread]"]["llama_cpp"] == "llama.cpp[1 thread]"
    assert ratios["numba[2 threads]"]["prefill"] == pytest.approx(0.9)
    assert ratios["numba[2 threads]"]["decode"] == pytest.approx(0.75)


def test_bench_compare_llama_cpp_on_a_tiny_model(tiny_model, tmp_path):
    """llama.cpp (optional extra `llamacpp`) in its own process, fed realm's ids: a row, ratios and agreement."""
    pytest.importorskip("llama_cpp")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--model", str(tiny_model), "--engines", "numba", "--threads", "1",
                                       "--prompt-tokens", "12", "--gen-tokens", "3", "--repeat", "2",
                                       "--no-startup", "--compare-llama-cpp", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    llama = [r for r in report["runs"] if r["engine"] == "llama.cpp"]
    assert [r["label"] for r in llama] == ["llama.cpp[1 thread]"]
    assert llama[0]["decode_tps"]["n"] == 2 and llama[0]["decode_tps"]["min"] > 0
    assert llama[0]["engine_stats"]["use_extra_bufts"] is False
    (ratio,) = report["llama_cpp_ratios"]
    assert ratio["label"] == "numba[1 thread]" and ratio["prefill"] > 0 and ratio["decode"] > 0
    # same ids in, the same quantized model: llama.cpp rounds activations to 8 bits, so close, not equal
    agree = report["agreement"]["llama.cpp vs numba"]
    assert agree["positions"] == 12 and agree["top1_agreement"] >= 0.75 and agree["max_abs_diff_rel"] < 0.1
    assert "÷ llama.cpp" in (out / "report.md").read_text()


def test_bench_node_row_runs_the_javascript_host(tiny_model, tmp_path):
    """`--engines wasm,node`: the Node host's row, measured in its own process, with the same logits as
    the Python host's guest (same guest, same ids) and its ratio to it."""
    from test_js_node import node_or_skip

    node_or_skip()
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--model", str(tiny_model), "--engines", "wasm,node", "--threads", "1",
                                       "--runtime", "wasmtime", "--prompt-tokens", "12", "--gen-tokens", "3",
                                       "--repeat", "2", "--no-startup", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    (node,) = [r for r in report["runs"] if r["engine"] == "node"]
    assert node["label"] == "node[64 MiB, 1 instance]"
    assert node["decode_tps"]["n"] == 2 and node["decode_tps"]["min"] > 0 and node["prefill_tps"]["min"] > 0
    assert 0 < node["engine_stats"]["peak_memory"] <= 64 << 20
    assert node["host_calls_per_token"] > 0 and node["bytes_fetched_per_token"] > 0
    (ratio,) = report["node_ratios"]
    assert ratio["python"] == "wasm (wasmtime)[64 MiB, 1 thread]" and ratio["decode"] > 0
    agree = report["agreement"]["node vs wasm (wasmtime)"]
    assert agree["positions"] == 12 and agree["top1_agreement"] == 1.0 and agree["max_abs_diff"] == 0.0
    assert "The Node host ÷ the Python host" in (out / "report.md").read_text()


def test_bench_has_a_wasm_row_set_per_runtime():
    """`--runtime all` (the default): the 64 MiB and resident rows for every installed runtime; a
    runtime without parallel calls (wasmer) gets only the 1-instance rows whatever --threads says."""
    from types import SimpleNamespace

    from realm.bench import BenchSettings, _variants
    from realm.host.runtime import adapter, available_runtimes

    model = SimpleNamespace(gguf=SimpleNamespace(file_size=100 << 20))
    for rt in available_runtimes():
        rows = _variants("wasm", BenchSettings(runtimes=(rt,), threads=(1, 2)), model)
        threads = {1, 2} if adapter(rt).Guest.parallel_calls else {1}
        assert {o["runtime"] for _, o in rows} == {rt}
        assert {o["threads"] for _, o in rows} == threads
        assert len(rows) == 2 * len(threads), rows  # two budgets
    rows = _variants("wasm", BenchSettings(threads=(1,)), model)
    assert [o["runtime"] for _, o in rows] == [rt for rt in available_runtimes() for _ in ("default", "resident")]


def test_bench_wasmer_runtime_selected_or_refused_plainly(tiny_model):
    from realm.bench import BenchSettings, bench_runtimes
    from realm.host.runtime import unavailable_reason

    if unavailable_reason("wasmer") is None:  # CPython 3.10 with the wasmer extra
        assert bench_runtimes(BenchSettings(runtimes=("wasmer",))) == ["wasmer"]
        assert "wasmer" in bench_runtimes(BenchSettings(runtimes=("all",)))
        return
    result = CliRunner().invoke(main, ["bench", "--model", str(tiny_model), "--engines", "wasm",
                                       "--runtime", "wasmer", "--no-startup", "--repeat", "1"])
    assert result.exit_code != 0
    assert "wasmer" in result.output and "3.10" in result.output, result.output
    assert "wasmer" not in bench_runtimes(BenchSettings(runtimes=("all",)))
