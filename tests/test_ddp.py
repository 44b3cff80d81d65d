"""Data-parallel training: batch split, loss shares, 2 workers vs 1 (spawned, and launched by torchrun), the
adapter, resume, the CLI.

Tolerances of the 2-vs-1 comparison: at random init VAD's per-sample Hungarian matching has near-ties
(alternative assignments within ~1e-6 of cost), so any change in float summation order flips a few matches.
Measured on the debug recipe: one process on 1 vs 2 threads differs exactly as much as 2 workers vs 1
(step loss <= 1.1e-4 relative, gradient norm 1.4e-5 relative, ~2.6% of weights by more than 1e-5, Adam
amplifying near-zero gradients). Normalising each worker's loss by its own counts instead of the global ones
moves the step loss by 1.8e-2 and the gradient norm by 8e-3: the bounds below sit between the two.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from netroller.cli.main import main
from netroller.data.dataset import collate
from netroller.distributed.ddp import LAUNCHER_VARIABLES, Launched
from netroller.errors import ConfigError
from netroller.models.vad.config import recipe
from netroller.models.vad.detector import VAD
from netroller.models.vad.losses import vad_losses
from netroller.stages.batching import global_batches, global_loss, rank_share
from netroller.stages.run_dir import read_metrics
from netroller.stages.train import TrainConfig, build_dataset, epoch_loader, train

SAMPLES, BATCH = 4, 2


def config(index_path, out, **over) -> TrainConfig:
    kw = dict(index=index_path, out=out, epochs=1, batch_size=BATCH, max_samples=SAMPLES)
    return TrainConfig(**(kw | over))


@pytest.fixture(scope="module")
def runs(index_path, tmp_path_factory):
    """The same epoch trained by 1 worker (in-process) and by 2 workers (through the CLI)."""
    base = tmp_path_factory.mktemp("ddp")
    one = train(config(index_path, base / "one"))
    args = ["train", "--index", str(index_path), "--out", str(base / "two"), "--epochs", "1"]
    args += ["--batch-size", str(BATCH), "--max-samples", str(SAMPLES), "--num-workers", "2"]
    return {"one": one, "code": main(args), "two": base / "two"}


def test_global_batches_are_a_shuffling_loaders_order(index_path, tmp_path):
    from torch.utils.data import DataLoader

    from netroller.stages.batching import epoch_generator

    cfg = config(index_path, tmp_path, max_samples=7, batch_size=3)
    ds = build_dataset(cfg, recipe(cfg.recipe))
    loader = DataLoader(
        ds, batch_size=3, shuffle=True, generator=epoch_generator(cfg.seed, 2), collate_fn=collate
    )
    assert [b.sample_tokens for b in loader] == [
        b.sample_tokens for b in epoch_loader(ds, cfg, 2, collate)[0]
    ]
    tokens = [b.sample_tokens for b in epoch_loader(ds, cfg, 2, collate)[0]]
    expected = [[ds.records[i].sample_token for i in b] for b in global_batches(len(ds), 3, cfg.seed, 2)]
    assert tokens == expected


def test_rank_shares_split_each_global_batch_disjointly():
    batch = [7, 3, 5, 1, 0]
    shares = [rank_share(batch, r, 2) for r in range(2)]
    assert shares == [([7, 3, 5], 1.0), ([1, 0], 1.0)]


def test_a_last_batch_shorter_than_the_workers_pads_with_weight_zero():
    assert [rank_share([4], r, 2) for r in range(2)] == [([4], 1.0), ([4], 0.0)]


def test_worker_shares_add_up_to_the_whole_batch_loss(index_path, tmp_path):
    cfg = config(index_path, tmp_path)
    vad_cfg = recipe(cfg.recipe)
    ds = build_dataset(cfg, vad_cfg)
    torch.manual_seed(0)
    model = VAD(vad_cfg).eval()  # running BatchNorm statistics: the halves see the same network
    whole = collate([ds[i] for i in range(4)])
    halves = [collate([ds[i] for i in idx]) for idx in ([0, 1], [2, 3])]

    def terms(b):
        out = model.forward_train(b.inputs.frame, b.inputs.history)
        return vad_losses(out, b.targets, vad_cfg)

    with torch.no_grad():
        expected = terms(whole)
        parts = [terms(h) for h in halves]
    counts = {k: sum(float(p[k].count) for p in parts) for k in parts[0]}
    shares = [global_loss(p, lambda local: counts, 1.0)[1] for p in parts]
    for name, term in expected.items():
        assert shares[0][name] + shares[1][name] == pytest.approx(float(term.value), rel=1e-5, abs=1e-6)


def test_batch_not_divisible_by_workers_is_refused(index_path, tmp_path):
    with pytest.raises(ConfigError, match="batch_size 3 does not divide into workers=2 x accumulate=1"):
        config(index_path, tmp_path, batch_size=3, workers=2)


def test_cli_refuses_a_bad_worker_count(index_path, tmp_path, capsys):
    args = ["train", "--index", str(index_path), "--out", str(tmp_path / "x"), "--max-samples", "2"]
    assert main(args + ["--num-workers", "0"]) == 2
    assert "TrainConfig.workers must be >= 1, got 0" in capsys.readouterr().err
    assert main(args + ["--num-workers", "3", "--batch-size", "4"]) == 2
    assert "batch_size 4 does not divide into workers=3 x accumulate=1" in capsys.readouterr().err


def test_cli_two_workers_write_one_run_dir(runs):
    two = runs["two"]
    assert runs["code"] == 0
    assert {p.name for p in two.iterdir()} == {p.name for p in runs["one"].iterdir()}
    assert json.loads((two / "train_config.json").read_text())["workers"] == 2
    assert [r["step"] for r in read_metrics(two, "step")] == [1, 2]


def test_two_workers_log_the_one_worker_losses(runs):
    one, two = read_metrics(runs["one"], "step"), read_metrics(runs["two"], "step")
    assert [r["total"] for r in two] == pytest.approx([r["total"] for r in one], rel=1e-3)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=2e-4)


def test_two_workers_end_with_the_one_worker_weights(runs):
    a = load_file(str(runs["one"] / "checkpoints" / "last.safetensors"))
    b = load_file(str(runs["two"] / "checkpoints" / "last.safetensors"))
    assert set(a) == set(b)
    diff = torch.cat([(a[k].double() - b[k].double()).abs().flatten() for k in a])
    assert float(diff.max()) < 1e-3
    assert float((diff > 1e-5).double().mean()) < 0.05


def test_a_two_worker_run_resumes_on_one_worker(runs, index_path, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(runs["one"], one)
    shutil.copytree(runs["two"], two)
    for run in (one, two):
        train(config(index_path, run, epochs=2, resume=True))
    a, b = read_metrics(one, "step"), read_metrics(two, "step")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["total"] for r in b[2:]] == pytest.approx([r["total"] for r in a[2:]], rel=1e-3)


def test_cli_fine_tune_trains_the_adapter_on_two_workers(index_path, tiny_cache, tmp_path):
    out = tmp_path / "bias"
    args = ["train", "--index", str(index_path), "--cache", str(tiny_cache), "--out", str(out)]
    args += ["--epochs", "1", "--max-samples", str(SAMPLES), "--batch-size", str(BATCH), "--num-workers", "2"]
    assert main(args) == 0
    weights = load_file(str(out / "checkpoints" / "last.safetensors"))
    assert any(k.startswith("hook.netroller.") for k in weights)
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in lines] == ["run", "step", "step", "epoch"]  # rank 0 alone logs


# ---- launched by torchrun -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchrun_run(index_path, tmp_path_factory):
    """The `runs` epoch as `torchrun --standalone --nproc-per-node 2 -m netroller.cli.main train ...`."""
    out = tmp_path_factory.mktemp("torchrun") / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [
        "-m",
        "netroller.cli.main",
        "train",
        "--index",
        str(index_path),
        "--out",
        str(out),
        "--epochs",
        "1",
    ]
    cmd += ["--batch-size", str(BATCH), "--max-samples", str(SAMPLES)]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    proc = subprocess.run(
        cmd, env=env | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600
    )
    return out, proc


def test_torchrun_processes_join_one_group_and_log_the_one_worker_losses(runs, torchrun_run):
    out, proc = torchrun_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run: ") == 1  # rank 0 alone speaks
    assert json.loads((out / "train_config.json").read_text())["workers"] == 2
    one, two = read_metrics(runs["one"], "step"), read_metrics(out, "step")
    assert [r["total"] for r in two] == pytest.approx([r["total"] for r in one], rel=1e-3)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=2e-4)


LAUNCHED = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


def test_num_workers_under_a_launcher_is_refused_in_one_line(index_path, tmp_path, monkeypatch, capsys):
    for name, value in LAUNCHED.items():
        monkeypatch.setenv(name, value)
    args = ["train", "--index", str(index_path), "--out", str(tmp_path / "x"), "--num-workers", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--num-workers 2 spawns processes on this machine, but a launcher started this one" in err
    assert not (tmp_path / "x").exists()


def test_launcher_variables_are_read_and_checked():
    assert Launched.from_env({}) is None
    got = Launched.from_env(LAUNCHED | {"RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert got == Launched(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert Launched.from_env(LAUNCHED).local_world_size == 2  # no LOCAL_WORLD_SIZE: the world size
    with pytest.raises(ConfigError, match="but not MASTER_ADDR, MASTER_PORT: start training with torchrun"):
        Launched.from_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="WORLD_SIZE must be a non-negative integer, got 'two'"):
        Launched.from_env(LAUNCHED | {"WORLD_SIZE": "two"})
    with pytest.raises(ConfigError, match="RANK 2 / LOCAL_RANK 0 do not fit WORLD_SIZE 2"):
        Launched.from_env(LAUNCHED | {"RANK": "2"})


def test_a_launched_rank_takes_the_gpu_of_its_local_rank():
    launched = Launched(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert launched.device("cpu") == torch.device("cpu")
    if torch.cuda.device_count() > 1:
        assert launched.device("cuda") == torch.device("cuda:1")
    else:
        with pytest.raises(ConfigError, match="LOCAL_RANK 1 needs GPU 1, this machine has"):
            launched.device("cuda")
