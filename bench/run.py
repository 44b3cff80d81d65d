"""Run every benchmark and write bench-results.json at the repository root.

    make bench                                  # all benchmarks, full size
    python -m netroller.bench.run reader gm     # only some (module names without the bench_ prefix)
    python -m netroller.bench.run --smoke       # every benchmark at tiny sizes, in seconds (what the tests run)

Each `bench/bench_<topic>.py` exposes `run(size=None) -> dict`, `full()` and `smoke()` (its sizes); results are
merged under the topic's name, with the machine they ran on and the load average at the start and end of the
topic. A benchmark that fails is recorded with its error, the others still run and the command exits 1.
A smoke run prints its figures and writes nothing.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from netroller.bench.rounds import loadavg
from netroller.storage.atomic import write_json_atomic

TOPICS = ("reader", "gm", "harvest", "vad", "netroller")
ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def run_topic(topic: str, *, smoke: bool = False) -> dict:
    """One benchmark's figures, with the load average at its start and end and its wall time."""
    if topic not in TOPICS:
        raise ValueError(f"unknown benchmark {topic!r} (benchmarks: {', '.join(TOPICS)})")
    module = importlib.import_module(f"netroller.bench.bench_{topic}")
    start_load, start = loadavg(), time.perf_counter()
    figures = module.run(module.smoke() if smoke else module.full())
    return {
        **figures,
        "smoke": smoke,
        "loadavg_start": start_load,
        "loadavg_end": loadavg(),
        "bench_seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str]) -> int:
    smoke = "--smoke" in argv
    topics = [a for a in argv if a != "--smoke"] or list(TOPICS)
    unknown = [t for t in topics if t not in TOPICS]
    if unknown:
        print(f"error: unknown benchmark {unknown[0]!r} (benchmarks: {', '.join(TOPICS)})", file=sys.stderr)
        return 2
    out_path = ROOT / "bench-results.json"
    results = json.loads(out_path.read_text()) if out_path.exists() and not smoke else {}
    results["machine"] = machine()
    failed = 0
    for topic in topics:
        print(f"== bench {topic}", flush=True)
        try:
            figures = run_topic(topic, smoke=smoke)
        except Exception as err:  # keep the other benchmarks' figures
            traceback.print_exc()
            figures = {"error": f"{type(err).__name__}: {err}"}
            failed += 1
        results[topic] = figures
        print(json.dumps(figures, indent=2), flush=True)
        if not smoke:
            write_json_atomic(out_path, results)
    if not smoke:
        print(f"wrote {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
