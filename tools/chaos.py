"""The reliability suite's long version (`make chaos`): real faults injected into the pipeline, each followed
by the recovery the design promises and checked against an uninterrupted run.

    python -m netroller.tools.chaos --trials 10 --seed 0
    -> a summary table on stdout and work/chaos-results.json (one entry per trial)

Faults, all real (no mocks): SIGKILL of a `netroller harvest` process at seeded points (in-process and Ray
workers=1), then a check that every committed shard's bytes verify, a resume and an array-for-array
comparison with an uninterrupted cache; a second harvest while one runs (refused); bytes overwritten in a
committed shard (`cache verify` names it, the same harvest re-run repairs it); one bit flipped inside a
sample's data (the training reader refuses that sample by name: 0 samples silently wrong); a full disk (a
tiny tmpfs; needs root, else reported as skipped); cache.json / manifest.parquet damaged (every command
refuses it, nothing is overwritten); SIGKILL of `netroller train` after its first checkpoint (`--resume` gives the same losses).
tests/test_reliability.py runs these functions with few trials.

A developer tool, not part of the product: it drives the CLI from above (`netroller.cli.main`), so it lives
in tools/, which the wheel does not ship and no product module imports; it runs from a checkout, where the
editable install maps `netroller` onto the repository root.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import psutil
import typer

from netroller.errors import CacheError, ConfigError

Launcher = Literal["subprocess", "fork"]
"""How a killed CLI process starts: `python -m netroller.cli.main` (real start-up, ~6 s of imports), or a
child forked from a server that imported the CLI once (same entry point, ~0.2 s: what keeps the tests fast)."""

_FORK_PRELOAD = [
    "netroller.cli.main",
    "netroller.stages.harvest",
    "netroller.stages.train",
    "transformers.models.llava.modeling_llava",
    "transformers.models.llava.processing_llava",
    "transformers.models.clip.image_processing_clip",
]
_POLL_S = 0.005


@dataclass(kw_only=True)
class TrialResult:
    """One injected fault and what the recovery showed."""

    scenario: str
    """Which fault family, e.g. "harvest-kill/in-process"."""
    trial: int
    """Trial number within the scenario."""
    fault: str
    """What was done, in words."""
    passed: bool = True
    """Every check held."""
    detail: str = ""
    """The first check that failed (empty when passed)."""
    skipped: bool = False
    """The fault could not be injected here (e.g. no tmpfs without root)."""
    samples_lost: int = 0
    """Samples the uninterrupted run has that the recovered one lacks."""
    seconds: float = 0.0
    """Wall time of the trial."""
    facts: dict = field(default_factory=dict)
    """Scenario-specific observations (plain JSON types)."""

    def fail(self, why: str) -> TrialResult:
        if self.passed:
            self.passed, self.detail = False, why
        return self


# ---- running the CLI ------------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`netroller ARGV` in this process: (exit code, stdout, stderr)."""
    from netroller.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines the CLI printed."""
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def _cli_child(argv: list[str]) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    import torch

    from netroller.cli.main import main

    torch.set_num_threads(1)
    os._exit(main(argv))


class CliProcess:
    """A `netroller` CLI run in its own process, to be killed with SIGKILL."""

    def __init__(self, argv: list[str], launcher: Launcher):
        argv = [str(a) for a in argv]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        if launcher == "subprocess":
            cmd = [sys.executable, "-m", "netroller.cli.main", *argv]
            self._popen = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._proc = None
            self.pid = self._popen.pid
        elif launcher == "fork":
            os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the fork server when it starts
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(_FORK_PRELOAD)
            self._popen = None
            self._proc = ctx.Process(target=_cli_child, args=(argv,), daemon=False)
            self._proc.start()
            self.pid = self._proc.pid
        else:
            raise ConfigError(f"launcher must be subprocess or fork, got {launcher!r}")

    def poll(self) -> int | None:
        if self._popen is not None:
            return self._popen.poll()
        return self._proc.exitcode

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.poll() is None:
            if self._popen is not None:
                self._popen.kill()
            else:
                self._proc.kill()
        self.wait()

    def wait(self, timeout: float | None = None) -> int | None:
        if self._popen is not None:
            try:
                return self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        self._proc.join(timeout)
        return self._proc.exitcode


@contextlib.contextmanager
def cli_process(argv: list[str], launcher: Launcher) -> Iterator[CliProcess]:
    """A CliProcess that is killed (with any descendants it left) on the way out, whatever happens."""
    proc = CliProcess(argv, launcher)
    try:
        yield proc
    finally:
        left = proc.descendants()
        proc.kill()
        reap(left)


def reap(processes: list[psutil.Process], grace_s: float = 10.0) -> list[str]:
    """Wait for processes a killed CLI had started (e.g. Ray's) to exit; SIGKILL those still alive after
    `grace_s` (so no orphan writes beside the resumed harvest). Returns the names of those it killed."""
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    names = []
    for p in alive:
        with contextlib.suppress(psutil.Error):
            names.append(p.name())
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    return names


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(_POLL_S)


# ---- comparing caches -----------------------------------------------------------------------------------


def cache_arrays(root: Path) -> dict[str, np.ndarray]:
    import zarr

    group = zarr.open_group(Path(root) / "latents.zarr", mode="r")
    return {name: np.asarray(group[name][...]) for name in ("hidden", "length", "token_ids")}


def first_difference(got: Path, want: Path) -> str | None:
    """Name of the first array that differs between two caches (None when all are equal)."""
    a, b = cache_arrays(got), cache_arrays(want)
    return next((name for name in b if not np.array_equal(a[name], b[name])), None)


def check_against_reference(res, root: Path, reference: Path, after: str) -> None:
    """Fail `res` when the cache at `root` differs from the uninterrupted `reference` (naming the first array
    that does), and record how many of the reference's samples it lacks."""
    diff = first_difference(root, reference)
    if diff is not None:
        res.fail(f"after {after}, array {diff!r} differs from the uninterrupted cache")
    res.samples_lost = samples_lost(root, reference)


def samples_lost(got: Path, want: Path) -> int:
    """Samples present in `want` but absent from `got`."""
    from netroller.storage.reader import CacheReader

    ref = CacheReader(want)
    tokens = ref.tokens
    return int((ref.read(tokens).present & ~CacheReader(got).read(tokens).present).sum())


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `root` (to show that nothing was overwritten)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def litter(root: Path) -> list[str]:
    """Temporary files a killed writer left behind (harmless: never read, never committed)."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.name.startswith("."))


# ---- the harvest under test -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HarvestSetup:
    """One harvest configuration and its uninterrupted result, the reference every trial compares with."""

    index: Path
    gm: Path
    reference: Path
    tokens: int
    shard_size: int
    splits: str
    num_shards: int
    shard_seconds: float
    """Time one shard took in the uninterrupted harvest (median gap between its commit records)."""

    def argv(self, out: Path, *, workers: int = 0, extra: tuple[str, ...] = ()) -> list[str]:
        return [
            "harvest", "--index", self.index, "--out", out, "--model", self.gm, "--tokens", str(self.tokens),
            "--shard-size", str(self.shard_size), "--splits", self.splits, "--workers", str(workers), *extra,
        ]  # fmt: skip

    def harvest(self, out: Path) -> Path:
        from netroller.stages.harvest import HarvestConfig, harvest

        cfg = HarvestConfig(
            index=self.index,
            out=out,
            model=str(self.gm),
            tokens=self.tokens,
            shard_size=self.shard_size,
            splits=tuple(self.splits.split(",")),
            workers=0,
            progress=False,
        )
        return harvest(cfg)


def make_setup(
    index: Path, gm: Path, work: Path, *, tokens: int = 4, shard_size: int = 2, splits: str = "val"
) -> HarvestSetup:
    """Harvest the reference cache in this process and time its shards."""
    from netroller.storage.reader import CacheReader

    reference = Path(work) / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    probe = HarvestSetup(
        index=index, gm=gm, reference=reference, tokens=tokens, shard_size=shard_size, splits=splits,
        num_shards=0, shard_seconds=0.0,
    )  # fmt: skip
    probe.harvest(reference)
    times = sorted(json.loads(p.read_text())["time"] for p in (reference / "commits").glob("*.json"))
    shards = CacheReader(reference).layout.num_shards
    gap = float(np.median(np.diff(times))) if len(times) > 1 else 0.5
    return replace(probe, num_shards=shards, shard_seconds=gap)


# ---- scenarios ------------------------------------------------------------------------------------------


def harvest_kill_trial(
    setup: HarvestSetup,
    root: Path,
    *,
    trial: int,
    seed: int,
    launcher: Launcher = "subprocess",
    workers: int = 0,
    probe_second_harvest: bool = False,
) -> TrialResult:
    """SIGKILL a harvest once k shards are committed plus a random part of a shard's time (k and the part
    drawn from (seed, trial)); check the committed shards' bytes, resume in-process, compare with the reference.

    With `probe_second_harvest`, a second harvest of the same cache is started while the first runs: it must
    be refused with one CacheLockedError line."""
    from netroller.storage.verify import verify_cache

    rng = np.random.default_rng([seed, trial, workers])
    after_shards = int(rng.integers(0, setup.num_shards))
    extra_s = float(rng.uniform(0.0, 1.0)) * setup.shard_seconds
    mode = "in-process" if workers == 0 else f"ray workers={workers}"
    res = TrialResult(
        scenario=f"harvest-kill/{mode}",
        trial=trial,
        fault=f"SIGKILL after {after_shards} committed shard(s) + {extra_s * 1000:.0f} ms",
    )
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    commits = Path(root) / "commits"
    with cli_process(setup.argv(root, workers=workers), launcher) as proc:
        try:
            wait_until(
                lambda: (Path(root) / ".lock").exists() or proc.poll() is not None, 300, "the harvest's lock"
            )
            if proc.poll() is not None and not (Path(root) / "cache.json").exists():
                return res.fail(f"the harvest exited with {proc.poll()} before creating the cache")
            if probe_second_harvest and proc.poll() is None:
                code, _, err = run_cli(setup.argv(root))
                res.facts["second_harvest"] = {"exit": code, "errors": error_lines(err)}
            wait_until(
                lambda: proc.poll() is not None or len(list(commits.glob("*.json"))) >= after_shards,
                300,
                f"{after_shards} committed shards",
            )
            time.sleep(extra_s)
        except TimeoutError as err:
            return res.fail(str(err))
        finished = proc.poll() is not None
        left = proc.descendants()
        proc.kill()
        res.facts["orphans_killed"] = reap(left)
    res.facts["finished_before_kill"] = finished
    report = verify_cache(root)
    res.facts["committed_at_kill"] = len(report.ok)
    res.facts["damaged_after_kill"] = [s for s, _ in report.damaged]
    if report.damaged:
        res.fail(f"committed shard(s) with wrong bytes after the kill: {report.damaged}")
    if probe_second_harvest:
        probe = res.facts.get("second_harvest", {"exit": None, "errors": []})
        if (
            probe["exit"] != 2
            or len(probe["errors"]) != 1
            or "being written by pid" not in probe["errors"][0]
        ):
            res.fail(f"a second harvest during the first was not refused in one line: {probe}")
    setup.harvest(root)
    check_against_reference(res, root, setup.reference, "resume")
    res.facts["litter"] = len(litter(root))
    res.seconds = time.perf_counter() - t0
    return res


def damage_bytes(path: Path, rng: np.random.Generator, n: int = 16, *, at_end: bool = False) -> int:
    """Overwrite `n` bytes of a file (at a random offset, or its last `n`: a shard's index) with different
    values, size unchanged; returns the offset."""
    data = bytearray(path.read_bytes())
    at = max(0, len(data) - n) if at_end else int(rng.integers(0, max(1, len(data) - n)))
    for i in range(at, min(at + n, len(data))):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))
    return at


def damaged_shard_trial(
    setup: HarvestSetup, root: Path, *, trial: int, seed: int, index_bytes: bool = False
) -> TrialResult:
    """Overwrite bytes of one committed shard file (anywhere, or its shard index with `index_bytes`);
    `cache verify` must name the shard and say a re-run repairs it, and the same harvest re-run (no extra
    flag) must say it recomputes the shard and make the cache equal to the uninterrupted one."""
    from netroller.storage.commits import expected_files
    from netroller.storage.meta import read_meta

    rng = np.random.default_rng([seed, trial, 7])
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(setup.reference, root)
    layout = read_meta(root).layout
    shard = int(rng.integers(0, layout.num_shards))
    array = str(rng.choice(["hidden", "length", "token_ids"]))
    rel = expected_files(layout, shard)[array]
    t0 = time.perf_counter()
    at = damage_bytes(Path(root) / rel, rng, at_end=index_bytes)
    res = TrialResult(
        scenario="damaged-shard", trial=trial, fault=f"16 bytes of {array} shard {shard} overwritten at {at}"
    )
    code, out, err = run_cli(["cache", "verify", root])
    res.facts["verify_exit"] = code
    if code == 0 or f"damaged shard {shard} " not in err or "re-running the same harvest" not in err:
        res.fail(f"cache verify did not report shard {shard} (exit {code}): {err.strip()}")
    code, _, err = run_cli(setup.argv(root))
    if code != 0:
        return res.fail(f"the harvest re-run failed (exit {code}): {err.strip()}")
    res.facts["rerun_said_recomputed"] = f"damaged shard(s) will be recomputed: {shard}" in err
    if not res.facts["rerun_said_recomputed"]:
        res.fail(f"the harvest re-run did not say it recomputes shard {shard}: {err.strip()}")
    code, _, _ = run_cli(["cache", "verify", root])
    if code != 0:
        res.fail("cache verify still fails after the harvest re-run")
    check_against_reference(res, root, setup.reference, "repair")
    res.seconds = time.perf_counter() - t0
    return res


def sample_bitflip_trial(setup: HarvestSetup, root: Path, *, trial: int, seed: int) -> TrialResult:
    """Flip one bit inside one committed sample's data in a `hidden` shard file (not its index, not its crc);
    the training reader must refuse exactly that sample naming it (0 samples silently wrong), and the same
    harvest re-run must repair it."""
    from netroller.storage.commits import expected_files
    from netroller.storage.meta import read_meta
    from netroller.storage.reader import CacheReader
    from netroller.storage.shard_format import MAX_UINT64, ShardIndex, array_specs

    rng = np.random.default_rng([seed, trial, 11])
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(setup.reference, root)
    layout = read_meta(root).layout
    ref = CacheReader(setup.reference)
    shard = int(rng.integers(0, layout.num_shards))
    rows = layout.shard_rows(shard)
    candidates = [r for r in rows if ref.tokens[r] in ref]  # committed, not failed in the harvest
    local = int(rng.choice(candidates)) - rows.start
    path = Path(root) / expected_files(layout, shard)["hidden"]
    spec = array_specs(layout)["hidden"]
    fd = os.open(path, os.O_RDONLY)
    try:
        index = ShardIndex.read(fd, os.fstat(fd).st_size, spec, where=str(path))
    finally:
        os.close(fd)
    assert index.offsets[local] != MAX_UINT64  # internal invariant: a committed sample is written
    bit = int(rng.integers(0, spec.inner_nbytes * 8))
    at = int(index.offsets[local]) + bit // 8
    data = bytearray(path.read_bytes())
    data[at] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))
    token = ref.tokens[rows.start + local]
    res = TrialResult(
        scenario="sample-bit-flip", trial=trial, fault=f"bit {bit} of sample {token} (shard {shard}) flipped"
    )
    t0 = time.perf_counter()
    reader = CacheReader(root)
    caught = silently_wrong = 0
    for t in ref.tokens:
        try:
            got = reader.read([t])
        except CacheError as err:
            if t == token and f"sample {t} " in str(err) and "re-run the same harvest" in str(err):
                caught += 1
            else:
                res.fail(f"reading {t} raised an unexpected error: {err}")
            continue
        want = ref.read([t])
        if not (np.array_equal(got.present, want.present) and np.array_equal(got.hidden, want.hidden)):
            silently_wrong += 1
    res.facts.update(caught=caught, silently_wrong=silently_wrong)
    if caught != 1 or silently_wrong:
        res.fail(f"{caught} of 1 damaged sample caught, {silently_wrong} sample(s) silently wrong")
    code, _, err = run_cli(setup.argv(root))
    if code != 0:
        return res.fail(f"the harvest re-run failed (exit {code}): {err.strip()}")
    check_against_reference(res, root, setup.reference, "repair")
    res.seconds = time.perf_counter() - t0
    return res


def _page_bytes(path: Path) -> int:
    return -(-path.stat().st_size // 4096) * 4096


def _mount_tmpfs(folder: Path, size: int, *, remount: bool = False) -> str | None:
    """Mount (or resize) a tmpfs of `size` bytes at `folder`; the reason when that is not possible here."""
    opts = f"remount,size={size}" if remount else f"size={size}"
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, text=True
        )
    except OSError as err:
        return f"mount is not available: {err}"
    return None if done.returncode == 0 else (done.stderr.strip() or f"mount exited {done.returncode}")


def disk_full_trial(setup: HarvestSetup, mount_dir: Path, *, trial: int = 0) -> TrialResult:
    """Harvest into a tmpfs that holds the new cache and about half its shards: one clear error line, no commit
    record for the shard that failed, every committed shard intact; after the tmpfs grows the same harvest
    resumes to the reference's arrays."""
    from netroller.storage.commits import expected_files
    from netroller.storage.meta import read_meta
    from netroller.storage.verify import verify_cache

    ref = setup.reference
    layout = read_meta(ref).layout
    shard_files = {rel for s in range(layout.num_shards) for rel in expected_files(layout, s).values()}
    per_shard = max(
        sum(_page_bytes(ref / rel) for rel in expected_files(layout, s).values()) + 4096
        for s in range(layout.num_shards)
    )  # its files + its commit record
    base = sum(
        _page_bytes(p)
        for p in ref.rglob("*")
        if p.is_file() and str(p.relative_to(ref)) not in shard_files and p.parent.name != "commits"
    )
    fits = layout.num_shards // 2
    size = base + 4096 + fits * per_shard + per_shard // 2  # + the lock file, + half a shard
    res = TrialResult(
        scenario="disk-full", trial=trial, fault=f"tmpfs of {size // 1024} KiB for {layout.num_shards} shards"
    )
    mount_dir = Path(mount_dir)
    mount_dir.mkdir(parents=True, exist_ok=True)
    why = _mount_tmpfs(mount_dir, size)
    if why is not None:
        res.skipped, res.detail = True, f"no tmpfs here ({why})"
        return res
    t0 = time.perf_counter()
    root = mount_dir / "cache"
    try:
        code, _, err = run_cli(setup.argv(root))
        errors = error_lines(err)
        res.facts.update(exit=code, errors=errors)
        if code != 2 or len(errors) != 1 or "No space left on device" not in errors[0]:
            res.fail(f"a full disk did not give one clear error line (exit {code}): {errors or err[-300:]}")
        report = verify_cache(root)
        res.facts["committed_when_full"] = len(report.ok)
        if report.damaged or len(report.ok) >= layout.num_shards:
            res.fail(f"after ENOSPC: {len(report.ok)} shards committed, damaged {report.damaged}")
        if (root / ".lock").exists():
            res.fail("the failed harvest left its lock behind")
        why = _mount_tmpfs(mount_dir, 64 * size, remount=True)
        if why is not None:
            return res.fail(f"could not grow the tmpfs: {why}")
        code, _, err = run_cli(setup.argv(root))
        if code != 0:
            return res.fail(f"resume after freeing space failed (exit {code}): {err.strip()[-300:]}")
        diff = first_difference(root, ref)
        if diff is not None:
            res.fail(f"after resume, array {diff!r} differs from the uninterrupted cache")
        res.samples_lost = samples_lost(root, ref)
    finally:
        subprocess.run(["umount", str(mount_dir)], capture_output=True)
    res.seconds = time.perf_counter() - t0
    return res


HostileKind = Literal[
    "cache.json truncated", "cache.json not an object", "manifest truncated", "manifest wrong columns"
]
HOSTILE_KINDS: tuple[HostileKind, ...] = (
    "cache.json truncated",
    "cache.json not an object",
    "manifest truncated",
    "manifest wrong columns",
)


def spoil_cache_file(root: Path, kind: HostileKind) -> str:
    """Damage cache.json or manifest.parquet of the cache at `root` as `kind` says; the damaged file's name."""
    import pyarrow.parquet as pq

    if kind.startswith("cache.json"):
        path = Path(root) / "cache.json"
        text = path.read_text()
        path.write_text(text[: len(text) // 2] if kind == "cache.json truncated" else json.dumps([text]))
    else:
        path = Path(root) / "manifest.parquet"
        if kind == "manifest truncated":
            path.write_bytes(path.read_bytes()[:100])
        else:
            table = pq.read_table(path).rename_columns(
                ["token", "row", "shard", "scene", "frame", "time", "q", "cat"]
            )
            pq.write_table(table, path)
    return path.name


def hostile_cache_trial(
    setup: HarvestSetup, root: Path, run_dir: Path, *, kind: HostileKind, trial: int = 0
) -> TrialResult:
    """`cache info`, `cache verify`, `harvest` and `train --cache` on a cache with a damaged cache.json or
    manifest: each exits 2 with one line naming the file; no file of the cache changes; no run dir appears."""
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(setup.reference, root)
    name = spoil_cache_file(root, kind)
    before = tree_digest(root)
    res = TrialResult(scenario="hostile-cache", trial=trial, fault=kind)
    t0 = time.perf_counter()
    commands = {
        "cache info": ["cache", "info", root],
        "cache verify": ["cache", "verify", root],
        "harvest": setup.argv(root),
        "train --cache": [
            "train",
            "--index",
            setup.index,
            "--out",
            run_dir,
            "--cache",
            root,
            "--epochs",
            "1",
        ],
    }
    for label, argv in commands.items():
        code, _, err = run_cli(argv)
        errors = error_lines(err)
        res.facts[label] = errors
        if code != 2 or len(errors) != 1 or name not in errors[0]:
            res.fail(f"{label}: exit {code}, expected 2 and one line naming {name}: {errors or err[-300:]}")
    if tree_digest(root) != before:
        res.fail("a command changed files of the damaged cache")
    if Path(run_dir).exists():
        res.fail(f"train --cache created {run_dir}")
    res.seconds = time.perf_counter() - t0
    return res


def train_kill_trial(
    index: Path, work: Path, *, launcher: Launcher = "subprocess", epochs: int = 3, trial: int = 0
) -> TrialResult:
    """SIGKILL `netroller train` right after its first checkpoint; `--resume` must log the same step losses
    as an uninterrupted run of the same settings."""
    from netroller.stages.run_dir import read_metrics

    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    args = ["--index", index, "--epochs", str(epochs), "--max-samples", "4", "--seed", "1"]
    res = TrialResult(scenario="train-kill", trial=trial, fault="SIGKILL after the first checkpoint")
    t0 = time.perf_counter()
    killed = work / "killed"
    with cli_process(["train", "--out", killed, *args], launcher) as proc:
        try:
            wait_until(
                lambda: (killed / "checkpoints" / "last.pt").exists() or proc.poll() is not None,
                600,
                "the first checkpoint",
            )
        except TimeoutError as err:
            return res.fail(str(err))
        proc.kill()
    epochs_done = len(read_metrics(killed, "epoch"))
    res.facts["epochs_before_kill"] = epochs_done
    if epochs_done >= epochs:
        res.fail("the run finished before the kill (nothing was interrupted)")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the killed process ran on one thread: same reductions, same bits
    try:
        code, _, err = run_cli(["train", "--out", killed, *args, "--resume"])
        if code != 0:
            return res.fail(f"train --resume failed (exit {code}): {err.strip()[-300:]}")
        straight = work / "straight"
        code, _, err = run_cli(["train", "--out", straight, *args])
    finally:
        torch.set_num_threads(threads)
    got, want = read_metrics(killed, "step"), read_metrics(straight, "step")
    res.facts["steps"] = len(want)
    if [r["step"] for r in got] != [r["step"] for r in want]:
        res.fail(f"resumed steps {[r['step'] for r in got]} != uninterrupted {[r['step'] for r in want]}")
    elif any(a["total"] != b["total"] for a, b in zip(got, want, strict=True)):
        worst = max(abs(a["total"] - b["total"]) for a, b in zip(got, want, strict=True))
        res.fail(f"resumed losses differ from the uninterrupted run (max |diff| {worst:.3g})")
    res.seconds = time.perf_counter() - t0
    return res


# ---- the long run ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ChaosConfig:
    """How many faults, of which kinds, where."""

    trials: int = 10
    """Kill trials per harvest mode (in-process and Ray), and damaged-shard trials."""
    seed: int = 0
    """Seeds every kill point and damaged byte."""
    work: Path = Path("work/chaos")
    """Scratch folder (dataset, GM, caches, runs); replaced on each run."""
    out: Path = Path("work/chaos-results.json")
    """Where the per-trial results go (JSON, written atomically)."""
    ray: bool = True
    """Also kill harvests running on Ray (workers=1)."""
    launcher: Launcher = "subprocess"
    """How killed processes start (see `Launcher`)."""

    def __post_init__(self) -> None:
        if not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"ChaosConfig.trials must be an integer >= 1, got {self.trials!r}")
        if self.launcher not in ("subprocess", "fork"):
            raise ConfigError(f"ChaosConfig.launcher must be subprocess or fork, got {self.launcher!r}")


def run_chaos(cfg: ChaosConfig) -> list[TrialResult]:
    """Build a small synthetic dataset and the tiny GM under cfg.work, then inject every fault."""
    import torch
    from tqdm import tqdm

    from netroller.data.synth import SynthConfig, generate
    from netroller.models.gm.tiny import build_tiny_gm
    from netroller.stages.prepare import PrepareConfig, prepare

    # The killed processes compute on one thread (OMP_NUM_THREADS=1); so does this one, because a reduction
    # split over another number of threads rounds differently and the comparison is bit for bit.
    torch.set_num_threads(1)
    work = Path(cfg.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = generate(
        SynthConfig(out=work / "nuscenes", scenes=2, samples_per_scene=8, image_width=160, image_height=90)
    )
    index = prepare(PrepareConfig(dataroot=data, version="v1.0-mini", out=work / "index.parquet"))
    gm = build_tiny_gm(work / "gm")
    setup = make_setup(index, gm, work, tokens=4, shard_size=2, splits="train,val")
    jobs: list[tuple[str, Callable[[], TrialResult]]] = []
    for t in range(cfg.trials):
        jobs.append(("kill", lambda t=t: harvest_kill_trial(
            setup, work / "kill", trial=t, seed=cfg.seed, launcher=cfg.launcher, probe_second_harvest=t == 0)))  # fmt: skip
    if cfg.ray:
        for t in range(cfg.trials):
            jobs.append(("kill-ray", lambda t=t: harvest_kill_trial(
                setup, work / "kill-ray", trial=t, seed=cfg.seed, launcher=cfg.launcher, workers=1)))  # fmt: skip
    for t in range(cfg.trials):
        jobs.append(("damage", lambda t=t: damaged_shard_trial(
            setup, work / "damaged", trial=t, seed=cfg.seed, index_bytes=t % 2 == 1)))  # fmt: skip
    for t in range(cfg.trials):
        jobs.append(
            ("bit-flip", lambda t=t: sample_bitflip_trial(setup, work / "bitflip", trial=t, seed=cfg.seed))
        )
    jobs.append(("disk-full", lambda: disk_full_trial(setup, work / "tmpfs")))
    for i, kind in enumerate(HOSTILE_KINDS):
        jobs.append(("hostile", lambda i=i, kind=kind: hostile_cache_trial(
            setup, work / "hostile", work / "hostile-run", kind=kind, trial=i)))  # fmt: skip
    jobs.append(("train-kill", lambda: train_kill_trial(index, work / "train", launcher=cfg.launcher)))
    results = []
    for _, job in tqdm(jobs, desc="chaos", unit="trial"):
        results.append(job())
    return results


def summarize(results: list[TrialResult]) -> list[dict]:
    """One row per scenario: trials, passed, skipped, samples lost, faults injected."""
    rows: dict[str, dict] = {}
    for r in results:
        row = rows.setdefault(
            r.scenario, {"scenario": r.scenario, "trials": 0, "passed": 0, "skipped": 0, "samples_lost": 0}
        )
        row["trials"] += 1
        row["passed"] += int(r.passed and not r.skipped)
        row["skipped"] += int(r.skipped)
        row["samples_lost"] += r.samples_lost
    return list(rows.values())


def format_table(rows: list[dict]) -> str:
    head = f"{'scenario':<28} {'trials':>6} {'passed':>6} {'skipped':>7} {'samples lost':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['scenario']:<28} {r['trials']:>6} {r['passed']:>6} {r['skipped']:>7} {r['samples_lost']:>12}"
        )
    return "\n".join(lines)


def _cli(
    trials: int = typer.Option(10, "--trials", help="Kill and damage trials per scenario."),
    seed: int = typer.Option(0, "--seed", help="Seed of kill points and damaged bytes."),
    work: Path = typer.Option(Path("work/chaos"), "--work", help="Scratch folder (replaced)."),
    out: Path = typer.Option(Path("work/chaos-results.json"), "--out", help="Results JSON."),
    no_ray: bool = typer.Option(False, "--no-ray", help="Skip the Ray (workers=1) kill trials."),
    launcher: str = typer.Option("subprocess", "--launcher", help="subprocess | fork (see Launcher)."),
) -> None:
    """Inject real faults into harvest, cache and training; print a summary; exit 1 if any check failed."""
    from netroller.storage.atomic import write_json_atomic

    cfg = ChaosConfig(trials=trials, seed=seed, work=work, out=out, ray=not no_ray, launcher=launcher)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    results = run_chaos(cfg)
    rows = summarize(results)
    failed = [r for r in results if not r.passed]
    write_json_atomic(
        cfg.out,
        {
            "seed": cfg.seed,
            "trials": cfg.trials,
            "seconds": round(time.perf_counter() - t0, 1),
            "faults_injected": sum(not r.skipped for r in results),
            "failed": len(failed),
            "summary": rows,
            "results": [asdict(r) for r in results],
        },
    )
    typer.echo(format_table(rows))
    for r in results:
        if r.skipped:
            typer.echo(f"skipped  {r.scenario} #{r.trial}: {r.detail}")
    for r in failed:
        typer.echo(f"FAILED   {r.scenario} #{r.trial} ({r.fault}): {r.detail}")
    typer.echo(
        f"{sum(not r.skipped for r in results)} faults injected, {len(failed)} failed; results in {cfg.out}"
    )
    if failed:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> int:
    """`python -m netroller.tools.chaos`; returns the exit code."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(_cli)
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as ex:
        return ex.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
