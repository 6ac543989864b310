"""realm.kernels.warm: after the Numba engine is created (which warms its kernels), its first prompt
and decode steps add no kernel specialization (compiled or loaded from the cache), and without the
warm-up they do; the
two halves of a cold warm-up are balanced; unknown task names are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from realm.errors import RealmError
from realm.kernels import warm
from realm.quants import GGMLType

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1] + "/tests"); sys.path.insert(0, sys.argv[1])
from numba.core.registry import CPUDispatcher
import realm.kernels.matvec, realm.kernels.ops, realm.kernels.dequant, realm.kernels.int8rows
from realm.gguf import GGUFFile
from realm.config import ModelConfig
from realm.engines.numba import NumbaEngine
mods = (realm.kernels.matvec, realm.kernels.ops, realm.kernels.dequant, realm.kernels.int8rows)
def specializations():
    return {f"{m.__name__}.{k}": len(v.signatures) for m in mods for k, v in vars(m).items()
            if isinstance(v, CPUDispatcher)}
g = GGUFFile(sys.argv[2])
eng = NumbaEngine(g, ModelConfig.from_gguf(g), n_ctx=64, threads=2, warm=sys.argv[3] == "1")
before = specializations()
eng.eval([1, 5, 9, 200, 17])      # an odd-length prompt: matmul, attention, norms
eng.eval([3, 4])                   # an even one
for t in (7, 8, 9):
    eng.eval([t])                  # decode steps: matvecs
after = specializations()
events = sorted(k for k in after if after[k] != before.get(k, 0))
print(json.dumps({"events": events, "warm_s": eng.warm_seconds}))
"""


@pytest.mark.parametrize("arch,qtype", [("gemma3", GGMLType.Q4_K), ("qwen2", GGMLType.Q5_0)])
def test_an_engine_compiles_nothing_after_its_warm_up(tmp_path, arch, qtype):
    from synth import make_model

    bs = 256 if qtype == GGMLType.Q4_K else 32
    path = make_model(tmp_path / "m.gguf", arch=arch, qtype=qtype, dim=bs, hidden_dim=bs, n_heads=2,
                      n_kv_heads=1, head_dim=bs // 2)
    r = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), str(path), "1"], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["events"] == [], f"kernels specialized after warm-up: {out['events']}"
    # the check can fail: without the warm-up the same evals specialize the model's kernels
    r = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), str(path), "0"], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert any("_matmul_" in e for e in json.loads(r.stdout.strip().splitlines()[-1])["events"])


def test_tasks_and_split():
    tasks = warm.tasks_for({GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q4_K}, embedding=GGMLType.Q8_0)
    assert tasks == ["ops", "get_rows:Q8_0", "matvec:Q4_K", "matmul:Q4_K", "matvec:Q6_K", "matmul:Q6_K"]
    assert warm.tasks_for({GGMLType.Q5_0, GGMLType.Q6_K}, embedding=GGMLType.Q6_K, packed={GGMLType.Q5_0, GGMLType.Q6_K},
                          output=GGMLType.Q6_K) == ["ops", "get_rows:Q6_K", "int8", "repack:Q5_0", "matmul:Q5_0",
                                                   "repack:Q6_K", "matvec:Q6_K", "matmul:Q6_K"]
    mine, theirs = warm._split(tasks)
    assert sorted(mine + theirs) == sorted(tasks) and not set(mine) & set(theirs)
    cost = lambda names: sum(warm._COST[n.partition(":")[0]] for n in names)  # noqa: E731
    assert abs(cost(mine) - cost(theirs)) <= max(warm._COST.values())


def test_unknown_tasks_are_refused():
    with pytest.raises(RealmError, match="unknown ggml type"):
        warm.run_task("matvec:Q9_9")
    with pytest.raises(RealmError, match="unknown task"):
        warm.run_task("transpose:Q4_K")


def test_a_warm_cache_starts_no_worker():
    warm.warm({GGMLType.Q8_0}, embedding=GGMLType.Q8_0)  # compiles (or loads) here
    again = warm.warm({GGMLType.Q8_0}, embedding=GGMLType.Q8_0)
    assert again["cold"] == [] and again["worker"] == []
