"""A training run dir's files: checkpoints, metrics.jsonl, and strict weight loading.

    checkpoints/epoch_0001.safetensors (+ .pt)    weights; optimizer, scheduler, RNG state and epoch beside
    checkpoints/last.safetensors (+ last.pt)      the latest epoch; last.pt is written last (the commit)
    metrics.jsonl                                 one JSON object per logged step and per epoch
    imported.json                                 instead of train_config.json, in a run made by
                                                  `netroller vad import` from a released checkpoint

Extra trainable modules (the NetRoller adapter) are stored beside the VAD's weights under 'hook.<name>.'.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from netroller.errors import ModelError
from netroller.storage.atomic import atomic_path, write_text_atomic

HOOK_PREFIX = "hook."
IMPORT_RECORD = "imported.json"


def checkpoint_weights(model: nn.Module, extra: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The model's tensors plus each extra module's under 'hook.<name>.', on the CPU, contiguous."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for name, m in extra.items():
        sd.update(
            {f"{HOOK_PREFIX}{name}.{k}": v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
        )
    return sd


def split_weights(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """The inverse of `checkpoint_weights`: (the model's tensors, {module name: that module's tensors})."""
    model: dict[str, torch.Tensor] = {}
    hooks: dict[str, dict] = {}
    for k, v in weights.items():
        if k.startswith(HOOK_PREFIX):
            name, _, rest = k[len(HOOK_PREFIX) :].partition(".")
            hooks.setdefault(name, {})[rest] = v
        else:
            model[k] = v
    return model, hooks


def save_checkpoint(run: Path, epoch: int, model: nn.Module, extra: dict, optimizer, scheduler) -> None:
    """Weights as safetensors (epoch and last), then the training state; last.pt last, as the commit."""
    ckpt = run / "checkpoints"
    weights = checkpoint_weights(model, extra)
    state = {
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "weights": f"epoch_{epoch:04d}.safetensors",
    }
    for name in (f"epoch_{epoch:04d}", "last"):
        with atomic_path(ckpt / f"{name}.safetensors") as tmp:
            save_file(weights, str(tmp))
    with atomic_path(ckpt / f"epoch_{epoch:04d}.pt") as tmp:
        torch.save(state, tmp)
    # last.pt names the epoch file it belongs to and is written last: a crash before it leaves the
    # previous epoch as the resume point.
    with atomic_path(ckpt / "last.pt") as tmp:
        torch.save(state, tmp)


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], where: Path) -> None:
    """Strict load with one clear line for the first mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    if missing:
        raise ModelError(
            f"{where}: weights lack {missing[0]} (and {len(missing) - 1} more) for this model config"
        )
    unexpected = sorted(set(weights) - set(own))
    if unexpected:
        raise ModelError(f"{where}: weights have {unexpected[0]} which this model config does not")
    for k, v in own.items():
        if tuple(weights[k].shape) != tuple(v.shape):
            raise ModelError(
                f"{where}: {k} has shape {tuple(weights[k].shape)}, the model config expects {tuple(v.shape)}"
            )
    model.load_state_dict(weights)


def trim_metrics(path: Path, last_epoch: int) -> None:
    """Drop lines of an interrupted epoch, so the log matches the checkpoint being resumed."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("epoch", 0) <= last_epoch]
    write_text_atomic(path, "".join(ln + "\n" for ln in keep))


class MetricsLog:
    """metrics.jsonl (always) and TensorBoard (when importable)."""

    def __init__(self, run: Path):
        self.path = run / "metrics.jsonl"
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tensorboard"))
        except ImportError:  # tensorboard is optional
            pass

    def write(self, record: dict, step: int) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, float):
                    self.tb.add_scalar(f"{record['kind']}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run: Path, kind: str = "epoch") -> list[dict]:
    """The run's metrics lines of one kind ("step" or "epoch")."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    return [
        r for r in (json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()) if r["kind"] == kind
    ]


def run_recipe(run: Path) -> str:
    """The VAD recipe a run dir holds: from its train config, or from the record of an imported checkpoint."""
    run = Path(run)
    for name in ("train_config.json", IMPORT_RECORD):
        if (run / name).is_file():
            return json.loads((run / name).read_text())["recipe"]
    raise ModelError(f"{run}: not a run dir (neither train_config.json nor {IMPORT_RECORD})")
