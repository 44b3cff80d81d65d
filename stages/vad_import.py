"""`netroller vad import`: a released VAD checkpoint (mmcv format) -> a run dir that `netroller eval`
evaluates and `netroller train --init RUN` fine-tunes.

    netroller vad import VAD_tiny.pth --recipe vad-tiny --out work/runs/vad-tiny-official

Run dir written (all of it or nothing: built in a temporary folder, renamed into place):
    model_config.json               the recipe's VADConfig
    checkpoints/last.safetensors    the checkpoint's tensors, checked against the recipe name by name and shape
    imported.json                   the source file, its sha256, the recipe and the checkpoint's `meta`
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from netroller.data.index import file_hash
from netroller.errors import ConfigError
from netroller.models.vad.checkpoint import check_weights, read_checkpoint
from netroller.models.vad.config import config_to_dict, recipe
from netroller.models.vad.detector import VAD, count_parameters
from netroller.stages.run_dir import IMPORT_RECORD
from netroller.storage.atomic import atomic_path, write_json_atomic

RELEASED_RECIPES = ("vad-tiny", "vad-base")


def import_checkpoint(checkpoint: Path, recipe_name: str, out: Path, *, trust: bool = False) -> Path:
    """Check `checkpoint` against the recipe's VAD and write the run dir `out`; returns `out`.

    ModelError (one line, naming the tensor) for a file of the other preset, a truncated file, a missing,
    extra or mis-shaped tensor; nothing is written then. ConfigError for an `out` that exists."""
    if recipe_name not in RELEASED_RECIPES:
        raise ConfigError(f"--recipe {recipe_name!r}: released checkpoints are {', '.join(RELEASED_RECIPES)}")
    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out} exists; choose a new run dir")
    cfg = recipe(recipe_name)
    checkpoint = Path(checkpoint)
    weights, meta = read_checkpoint(checkpoint, trust=trust)
    model = VAD(cfg)
    check_weights(model, weights, checkpoint, recipe_name)
    model.load_state_dict(weights, strict=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    record = {
        "recipe": recipe_name,
        "source": str(checkpoint.resolve()),
        "sha256": file_hash(checkpoint),
        "num_tensors": len(tensors),
        "num_parameters": count_parameters(model),
        "meta": _json_safe(meta),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        (tmp / "checkpoints").mkdir(parents=True)
        write_json_atomic(tmp / "model_config.json", config_to_dict(cfg))
        save_file(tensors, str(tmp / "checkpoints" / "last.safetensors"))
        write_json_atomic(tmp / IMPORT_RECORD, record)
    return out


def _json_safe(value: object) -> object:
    """The checkpoint's `meta` as JSON (anything else as its repr, long strings kept whole)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return repr(value)
