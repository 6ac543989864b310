"""Open time of the default model's GGUF: realm.gguf.GGUFFile (cold-ish and warm) vs gguf.GGUFReader.

Prints one JSON object per line. "cold" runs open the file in a fresh interpreter after asking the
kernel to drop the file's cached pages (posix_fadvise DONTNEED); "warm" runs reopen it in-process.

    python benchmarks/bench_gguf.py [--model PATH] [--runs N] [--skip-reference]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_COLD_CHILD = """
import os, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)
from realm.gguf import GGUFFile
t0, c0 = time.perf_counter(), time.process_time()
g = GGUFFile(path)
print(time.perf_counter() - t0, time.process_time() - c0)
"""


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def bench_cold(path: Path, runs: int) -> list[tuple[float, float]]:
    """(wall, cpu) seconds of opening in a fresh interpreter with the file's pages dropped."""
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", _COLD_CHILD, str(path)], check=True, capture_output=True,
                             text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall, cpu = out.stdout.strip().splitlines()[-1].split()
        times.append((float(wall), float(cpu)))
    return times


def bench_warm(path: Path, runs: int) -> list[tuple[float, float]]:
    """(wall, cpu) seconds of reopening in this process."""
    from realm.gguf import GGUFFile

    GGUFFile(path).close()
    times = []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        g = GGUFFile(path)
        times.append((time.perf_counter() - t0, time.process_time() - c0))
        g.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="GGUF file (default: the default model)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-reference", action="store_true", help="skip gguf.GGUFReader (~20-40 s)")
    args = ap.parse_args()
    if args.model is None:
        from realm.models import default_model_path

        args.model = default_model_path()
    path = args.model
    from realm.gguf import GGUFFile

    g = GGUFFile(path)
    emit(bench="gguf_file", path=str(path), file_size=g.file_size, n_metadata=len(g.metadata),
         n_tensors=len(g.tensors), n_tokens=len(g.metadata.get("tokenizer.ggml.tokens", [])),
         python=platform.python_version(), cpus=os.cpu_count(), loadavg=os.getloadavg()[0])
    g.close()

    for mode, fn in (("cold", bench_cold), ("warm", bench_warm)):
        times = fn(path, args.runs)
        wall = [w for w, _ in times]
        cpu = [c for _, c in times]
        emit(bench="gguf_open", impl="realm", mode=mode, runs=len(times), median_s=round(statistics.median(wall), 4),
             min_s=round(min(wall), 4), max_s=round(max(wall), 4), median_cpu_s=round(statistics.median(cpu), 4))

    if not args.skip_reference:
        import gguf

        t0, c0 = time.perf_counter(), time.process_time()
        reader = gguf.GGUFReader(path)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        emit(bench="gguf_open", impl="gguf.GGUFReader", mode="warm", runs=1, median_s=round(dt, 3),
             median_cpu_s=round(dc, 3),
             n_tensors=len(reader.tensors), gguf_version=getattr(gguf, "__version__", None))


if __name__ == "__main__":
    main()
