"""Run every benchmark and write bench-results.json at the repository root.

    make bench                      # all benchmarks
    python -m netroller.bench.run reader gm   # only some (module names without the bench_ prefix)

Each `bench/bench_<topic>.py` exposes `run() -> dict`; results are merged under the topic's name, with the
machine they ran on. A benchmark that fails is recorded with its error and the others still run.
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


def main(argv: list[str]) -> int:
    topics = argv or list(TOPICS)
    out_path = ROOT / "bench-results.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results["machine"] = machine()
    failed = 0
    for topic in topics:
        print(f"== bench {topic}", flush=True)
        start = time.perf_counter()
        try:
            figures = importlib.import_module(f"netroller.bench.bench_{topic}").run()
            figures["bench_seconds"] = round(time.perf_counter() - start, 1)
        except Exception as err:  # keep the other benchmarks' figures
            traceback.print_exc()
            figures = {"error": f"{type(err).__name__}: {err}"}
            failed += 1
        results[topic] = figures
        print(json.dumps(figures, indent=2), flush=True)
        write_json_atomic(out_path, results)
    print(f"wrote {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
