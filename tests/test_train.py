"""The train stage: run dir, exact resume, overfitting, load_run errors, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from netroller.cli.main import main
from netroller.data.dataset import SampleDataset, collate
from netroller.data.index import read_index
from netroller.errors import ConfigError, ModelError
from netroller.models.vad.config import config_to_dict, vad_tiny
from netroller.models.vad.predictions import plan_positions
from netroller.stages.run_dir import read_metrics
from netroller.stages.train import TrainConfig, TrainHooks, load_run, train


def config(vad_index, out, **over) -> TrainConfig:
    kw = dict(index=vad_index, out=out, recipe="debug", epochs=1, batch_size=2, seed=3, warmup_steps=1)
    kw.update(over)
    return TrainConfig(**kw)


@pytest.fixture(scope="module")
def one_epoch_run(vad_index, tmp_path_factory):
    return train(config(vad_index, tmp_path_factory.mktemp("runs") / "one"))


def test_train_writes_configs_checkpoints_and_metrics(one_epoch_run):
    names = {p.name for p in (one_epoch_run / "checkpoints").iterdir()}
    assert {"epoch_0001.safetensors", "epoch_0001.pt", "last.safetensors", "last.pt"} <= names
    assert json.loads((one_epoch_run / "train_config.json").read_text())["recipe"] == "debug"
    steps = read_metrics(one_epoch_run, "step")
    assert len(steps) == 2 and {
        "total",
        "loss_plan_reg",
        "loss_cls",
        "lr",
        "samples_per_s",
        "grad_norm",
    } <= set(steps[0])
    assert len(read_metrics(one_epoch_run, "epoch")) == 1


class InterruptAtStep:
    """A shift hook that interrupts training before the given step, as a Ctrl-C or a killed job would."""

    def __init__(self, step: int):
        self.step, self.calls = step, 0

    def __call__(self, batch, modules):
        self.calls += 1
        if self.calls == self.step:
            raise KeyboardInterrupt
        return None


def test_resume_equals_uninterrupted_training(vad_index, tmp_path):
    straight = train(config(vad_index, tmp_path / "straight", epochs=2))
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(config(vad_index, resumed, epochs=2), TrainHooks(shift=InterruptAtStep(4)))  # mid epoch 2
    train(config(vad_index, resumed, epochs=2, resume=True))
    a, b = read_metrics(straight, "step"), read_metrics(resumed, "step")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["total"] for r in a] == pytest.approx([r["total"] for r in b], rel=1e-6, abs=1e-7)
    wa, wb = load_run(straight)[0].state_dict(), load_run(resumed)[0].state_dict()
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)


def test_train_refuses_an_existing_run_without_resume(vad_index, one_epoch_run):
    with pytest.raises(ConfigError, match="--resume"):
        train(config(vad_index, one_epoch_run))


def test_resume_refuses_a_changed_seed(vad_index, one_epoch_run):
    with pytest.raises(ConfigError, match="seed=3"):
        train(config(vad_index, one_epoch_run, epochs=2, seed=4, resume=True))


def test_train_config_rejects_unknown_recipe(vad_index, tmp_path):
    with pytest.raises(ConfigError, match="recipe 'vad-huge'"):
        config(vad_index, tmp_path, recipe="vad-huge")


def test_load_run_of_a_missing_run_fails(tmp_path):
    with pytest.raises(ModelError, match="run dir not found"):
        load_run(tmp_path / "nope")


def test_load_run_with_another_recipes_weights_fails(one_epoch_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(one_epoch_run, other)
    (other / "model_config.json").write_text(json.dumps(config_to_dict(vad_tiny())))
    with pytest.raises(ModelError, match="shape|lack|have"):
        load_run(other)


def test_load_run_returns_an_eval_model_with_its_configs(one_epoch_run):
    model, vad_cfg, train_cfg = load_run(one_epoch_run)
    assert not model.training and vad_cfg.bev_h == 20 and train_cfg.seed == 3


def test_debug_overfits_a_sample(vad_index, tmp_path):
    # One sample: VAD sees the ego's own motion only through the CAN-bus signal added to the BEV queries,
    # too faint a path to tell two random-noise samples apart in a few dozen steps.
    run = train(
        config(
            vad_index,
            tmp_path / "fit",
            epochs=40,
            lr=4e-3,
            max_samples=1,
            warmup_steps=3,
            checkpoint_every=40,
        )
    )
    model, cfg, _ = load_run(run)
    ds = SampleDataset(read_index(vad_index), "train", vad=cfg, train=False, max_samples=1)
    batch = collate([ds[0]])
    with torch.no_grad():
        plan = plan_positions(model.forward_train(batch.inputs.frame, []), batch.inputs.command)
    err = (plan - batch.targets.ego_fut_trajs.cumsum(1)).norm(dim=-1)  # [B, T]
    mask = batch.targets.ego_fut_masks
    l2 = float((err * mask).sum() / mask.sum())
    assert l2 < 0.3, l2


def test_cli_train_runs_and_reports_bad_recipe(vad_index, tmp_path):
    out = tmp_path / "cli"
    code = main(
        ["train", "--index", str(vad_index), "--out", str(out), "--max-samples", "2", "--batch-size", "2"]
    )
    assert code == 0 and (out / "checkpoints" / "last.safetensors").is_file()
    assert main(["train", "--index", str(vad_index), "--out", str(tmp_path / "x"), "--recipe", "nope"]) == 2
    assert np.isfinite(read_metrics(out, "epoch")[0]["total"])


def test_losses_decrease_on_the_synthetic_set(index_path, tmp_path):
    run = train(config(index_path, tmp_path / "synth", epochs=4, max_samples=4, lr=1e-3, warmup_steps=2))
    epochs = [r["total"] for r in read_metrics(run, "epoch")]
    assert len(epochs) == 4 and epochs[-1] < epochs[0]


def _step_gradients(vad_index, tmp_path, accumulate: int) -> dict[str, torch.Tensor]:
    """The gradients of one train_step on the first 4 samples as `accumulate` micro-batches (dropout off)."""
    from netroller.models.vad.config import debug
    from netroller.models.vad.detector import VAD
    from netroller.stages.train import build_dataset, epoch_loader, train_step

    cfg = config(vad_index, tmp_path / f"acc{accumulate}", batch_size=4, accumulate=accumulate, max_samples=4)
    torch.manual_seed(0)
    model = VAD(debug()).eval()  # eval: no dropout, so one pass over the batch and micro-batches compare
    loader, weights, _ = epoch_loader(build_dataset(cfg, debug()), cfg, 1, collate)
    micro = list(loader)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    train_step(model, micro, opt, sched, cfg, TrainHooks(), weights=weights)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulated_micro_batches_give_the_gradients_of_one_large_batch(vad_index, tmp_path):
    whole = _step_gradients(vad_index, tmp_path, 1)
    for n in (2, 4):
        parts = _step_gradients(vad_index, tmp_path, n)
        assert parts.keys() == whole.keys()
        scale = max(g.abs().max() for g in whole.values())
        worst = max((parts[k] - whole[k]).abs().max() for k in whole)
        assert worst <= 1e-5 * scale, (n, float(worst), float(scale))


def _lr(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    from netroller.stages.train import lr_factor

    return lr_factor(step, cfg.epochs * steps_per_epoch, cfg, steps_per_epoch)


def test_the_epoch_schedule_is_mmcvs_cosine_annealing_with_warmup_by_epoch(vad_index, tmp_path):
    """The authors' c1: warm-up over epoch 1 from 1e-3 x lr, counted in micro-batches (8 per step), then
    one cosine value per epoch down to 1e-6 x lr at the end of 5 epochs (mmcv's formula, written out)."""
    import math

    cfg = config(
        vad_index, tmp_path, epochs=5, schedule="epoch", warmup_ratio=1e-3, min_lr_ratio=1e-6,
        warmup_steps=10, accumulate=8, batch_size=8,
    )  # fmt: skip
    spe = 10

    def regular(e: int) -> float:
        return 1e-6 + (1 - 1e-6) * 0.5 * (1 + math.cos(math.pi * e / 5))

    # step 0: micro-batches 0..7 ran with the lr set before micro-batch 7 (of 80 in the warm-up)
    assert _lr(cfg, 0, spe) == pytest.approx(1 - (1 - 7 / 80) * (1 - 1e-3))
    assert _lr(cfg, 4, spe) == pytest.approx(1 - (1 - 39 / 80) * (1 - 1e-3))
    assert _lr(cfg, 9, spe) == pytest.approx(1 - (1 - 79 / 80) * (1 - 1e-3))
    assert _lr(cfg, 10, spe) == pytest.approx(regular(1))  # epoch 2: cosine at 1 / 5
    assert _lr(cfg, 19, spe) == pytest.approx(regular(1))  # constant within the epoch
    assert _lr(cfg, 49, spe) == pytest.approx(regular(4))
    step = config(vad_index, tmp_path, epochs=5, warmup_steps=10)
    assert _lr(step, 10, spe) != _lr(step, 19, spe)  # the step schedule moves every step


def test_accumulation_that_does_not_divide_the_batch_is_refused(vad_index, tmp_path):
    with pytest.raises(ConfigError, match="batch_size 6 does not divide into workers=1 x accumulate=4"):
        config(vad_index, tmp_path, batch_size=6, accumulate=4)


def test_loader_processes_do_not_change_the_losses(vad_index, tmp_path):
    """Every sample's random draws depend on (seed, epoch, sample) only, so decoding in 2 loader processes
    gives the one-process run bit for bit."""
    runs = [train(config(vad_index, tmp_path / f"w{n}", num_workers=n, epochs=2)) for n in (0, 2)]
    a, b = (read_metrics(r, "step") for r in runs)
    assert [(r["total"], r["grad_norm"]) for r in a] == [(r["total"], r["grad_norm"]) for r in b]
