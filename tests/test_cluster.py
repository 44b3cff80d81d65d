"""Harvest on an existing two-node Ray cluster (`--ray-address`, RAY_ADDRESS) and as a submitted Ray job.

One cluster serves the module: a head node (with the dashboard, which hosts the job server) and a second
node, each `ray start --block --num-cpus=1`, started here as their own process groups and killed by id at
the end (never `ray stop`: it kills every Ray process on the machine, other test runs' included). The
nodes use 127.0.0.2, a loopback address Ray keeps as given (it rewrites 127.0.0.1 and localhost to the
host's interface address), and token authentication with a token made for this module.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr

from netroller.distributed.ray_harvest import check_reachable
from netroller.errors import ClusterError
from netroller.stages.harvest import HarvestConfig, harvest

pytestmark = pytest.mark.slow

NODE_IP = "127.0.0.2"
BIN = Path(sys.executable).parent  # the venv's bin: `ray` and `netroller` for every node and the job
START_TIMEOUT_S = 120
HARVEST_TIMEOUT_S = 240
# Same settings for every harvest of this module: 32 samples in 4 shards of 8, T=2, all layers.
SETTINGS = ["--tokens", "2", "--shard-size", "8"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((NODE_IP, 0))
        return s.getsockname()[1]


def _wait_for(what: str, ready, timeout_s: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists())
            raise TimeoutError(f"{what} not ready after {timeout_s} s\n{tails}")
        time.sleep(0.3)


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _http_answers(url: str, token: str) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@dataclass(frozen=True)
class Cluster:
    address: str  # GCS "host:port", what `--ray-address` / RAY_ADDRESS take
    dashboard: str  # the job server's URL
    env: dict[str, str]  # the environment every node, driver and `ray job` call runs with
    root: Path


def _start_node(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        # Own session (= own process group), so teardown can kill exactly this node and what it spawned.
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_nodes(nodes: list[subprocess.Popen], root: Path) -> None:
    """SIGKILL each node's process group and every descendant (workers, agents), then anything still
    naming this cluster's temp dir; a SIGTERM'd `ray start --block` waits ~30 s on its dead GCS."""
    victims: list[psutil.Process] = []
    for node in nodes:
        try:
            victims += psutil.Process(node.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    for node in nodes:
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait(timeout=30)
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(root) in arg for arg in proc.info["cmdline"] or ()):
            victims.append(proc)
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=15)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head (1 CPU, dashboard + job server) and a second node (1 CPU) on 127.0.0.2."""
    # Ray puts unix sockets under --temp-dir and those paths must stay under 107 bytes: pytest's tmp paths
    # are too long, so the cluster lives in a short folder of its own.
    root = Path(tempfile.mkdtemp(prefix="nr-", dir="/tmp"))
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_DEDUP_LOGS="0",
        OMP_NUM_THREADS="1",  # the drivers share this machine's 2 cores with the actors
    )
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    common = ["--num-cpus=1", "--object-store-memory=78643200", "--disable-usage-stats", "--block"]
    common += [f"--node-ip-address={NODE_IP}"]
    head_log, node_log = root / "head.log", root / "node.log"
    nodes = []
    try:
        nodes.append(
            _start_node(
                [str(BIN / "ray"), "start", "--head", f"--port={gcs}", f"--temp-dir={root}/h"]
                + ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"]
                + [
                    f"--ray-client-server-port={_free_port()}",
                    f"--dashboard-agent-listen-port={_free_port()}",
                ]
                + common,
                env,
                head_log,
            )
        )
        _wait_for("head GCS", lambda: _answers(NODE_IP, gcs), START_TIMEOUT_S, [head_log])
        nodes.append(
            _start_node(
                [str(BIN / "ray"), "start", f"--address={NODE_IP}:{gcs}", f"--temp-dir={root}/n"]
                + [f"--dashboard-agent-listen-port={_free_port()}"]
                + common,
                env,
                node_log,
            )
        )
        for name, log in (("head", head_log), ("second node", node_log)):
            _wait_for(
                name, lambda log=log: b"Ray runtime started" in log.read_bytes(), START_TIMEOUT_S, [log]
            )
        url = f"http://127.0.0.1:{dash}"
        _wait_for(
            "job server",
            lambda: _http_answers(f"{url}/api/version", token.read_text()),
            START_TIMEOUT_S,
            [head_log],
        )
        yield Cluster(address=f"{NODE_IP}:{gcs}", dashboard=url, env=env, root=root)
    finally:
        _kill_nodes(nodes, root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(index_path, tiny_gm, tmp_path_factory) -> Path:
    """The single-node answer: an in-process harvest (workers=0) with this module's settings."""
    out = tmp_path_factory.mktemp("cluster-ref") / "cache"
    cfg = HarvestConfig(
        index=index_path, out=out, model=str(tiny_gm), tokens=2, shard_size=8, workers=0, progress=False
    )
    return harvest(cfg)


def _arrays(root: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(root / "latents.zarr", mode="r")
    return {name: np.asarray(group[name][...]) for name in ("hidden", "length", "token_ids")}


def _assert_same_cache(got: Path, want: Path) -> None:
    a, b = _arrays(got), _arrays(want)
    for name in b:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert len(list((got / "commits").glob("*.json"))) == 4
    assert (got / "failures.parquet").is_file()


def _harvest_argv(index_path: Path, tiny_gm: Path, out: Path) -> list[str]:
    return ["harvest", "--index", str(index_path), "--out", str(out), "--model", str(tiny_gm), *SETTINGS]


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=HARVEST_TIMEOUT_S)


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_cli_harvest_with_ray_address_on_two_nodes_matches_in_process(
    cluster, reference, index_path, tiny_gm, tmp_path
):
    out = tmp_path / "cache"
    argv = [*_harvest_argv(index_path, tiny_gm, out), "--workers", "2", "--ray-address", cluster.address]
    proc = _run([str(BIN / "netroller"), *argv], cluster.env, tmp_path)
    _check(proc)
    # Two 1-CPU nodes: the two 1-CPU actors can only run one per node.
    assert f"harvest: Ray connected to {cluster.address} (2 CPUs, 0 GPUs)" in proc.stderr, proc.stderr[-3000:]
    assert "harvest: 2 worker(s) loaded the GM" in proc.stderr, proc.stderr[-3000:]
    _assert_same_cache(out, reference)


def test_cli_harvest_joins_the_cluster_named_by_ray_address_env(
    cluster, reference, index_path, tiny_gm, tmp_path
):
    # A relative --out: the actors must still write where the driver means, not under their own cwd.
    argv = [*_harvest_argv(index_path, tiny_gm, Path("cache")), "--workers", "2"]
    proc = _run([str(BIN / "netroller"), *argv], {**cluster.env, "RAY_ADDRESS": cluster.address}, tmp_path)
    _check(proc)
    assert f"harvest: Ray connected to {cluster.address} (2 CPUs, 0 GPUs)" in proc.stderr, proc.stderr[-3000:]
    _assert_same_cache(tmp_path / "cache", reference)


def test_ray_job_submit_harvest_succeeds_logs_progress_and_matches(
    cluster, reference, index_path, tiny_gm, tmp_path
):
    # The job's working dir is uploaded to the cluster: a folder of one file, not the repository.
    workdir = tmp_path / "job"
    workdir.mkdir()
    (workdir / "README").write_text("netroller harvest submitted as a Ray job\n")
    out = tmp_path / "cache"
    job_id = f"netroller-harvest-{uuid.uuid4().hex[:8]}"
    ray_job = [str(BIN / "ray"), "job"]
    submit = [*ray_job, "submit", "--address", cluster.dashboard, "--submission-id", job_id]
    submit += ["--working-dir", str(workdir), "--", "netroller"]
    # No --ray-address: inside a job, Ray sets RAY_ADDRESS to the cluster the job runs on.
    proc = _run([*submit, *_harvest_argv(index_path, tiny_gm, out), "--workers", "2"], cluster.env, tmp_path)
    _check(proc)
    status = _run([*ray_job, "status", "--address", cluster.dashboard, job_id], cluster.env, tmp_path)
    assert "succeeded" in (status.stdout + status.stderr).lower(), status.stdout + status.stderr
    logs = _run([*ray_job, "logs", "--address", cluster.dashboard, job_id], cluster.env, tmp_path)
    _check(logs)
    assert "harvest: 32 samples, 4/4 shards pending (32 samples)" in logs.stdout
    assert "32/32" in logs.stdout  # the tqdm bar reached the end
    _assert_same_cache(out, reference)


def test_unreachable_cluster_address_fails_at_once_naming_it():
    port = _free_port()  # bound and released: nothing listens there
    with pytest.raises(
        ClusterError, match=rf"cannot join the Ray cluster at {NODE_IP}:{port}: nothing answers"
    ):
        check_reachable(f"{NODE_IP}:{port}")
