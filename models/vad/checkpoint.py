"""Reading the released VAD checkpoints (mmcv format: a dict with `state_dict` and maybe `meta`) for our
VAD, strictly: every tensor named and shaped as the model has it, or one line saying which is not.

The checkpoint's names are the model's own (`img_backbone.*`, `img_neck.*`, `pts_bbox_head.*`): no
rename table is needed.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from netroller.errors import MissingPathError, ModelError

# A tensor whose shape tells the presets apart: the BEV queries (bev_h * bev_w rows).
PRESET_PROBE = "pts_bbox_head.bev_embedding.weight"
PRESET_BY_BEV_CELLS = {100 * 100: "vad-tiny", 200 * 200: "vad-base"}


def read_checkpoint(path: Path, *, trust: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """(the tensors, the `meta` dict or {}) of a checkpoint file: its `state_dict` entry, or the file itself
    when it is a plain name -> tensor dict.

    Only tensors and plain containers are unpickled unless `trust` (a file from a source you trust: full
    unpickling runs code the file names)."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        if not trust and "weights_only" in str(e):
            raise ModelError(
                f"{path}: holds objects other than tensors and plain values; if you trust its source, "
                "import it with --trust"
            ) from e
        raise ModelError(
            f"{path}: not a readable PyTorch checkpoint (truncated or damaged?): {_first(e)}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise ModelError(
            f"{path}: not a readable PyTorch checkpoint (truncated or damaged?): {_first(e)}"
        ) from e
    meta = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: holds no 'state_dict' of tensors (is it a VAD checkpoint?)")
    return {str(k): v for k, v in obj.items()}, meta


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def guess_preset(weights: dict[str, torch.Tensor]) -> str | None:
    """'vad-tiny' / 'vad-base' from the BEV size of the weights, or None."""
    probe = weights.get(PRESET_PROBE)
    return None if probe is None else PRESET_BY_BEV_CELLS.get(int(probe.shape[0]))


def check_weights(model: nn.Module, weights: dict[str, torch.Tensor], where: Path, preset: str) -> None:
    """ModelError naming the first missing, unexpected or mis-shaped tensor; a checkpoint of the other
    preset is named as such."""
    guessed = guess_preset(weights)
    if guessed is not None and guessed != preset:
        rows = tuple(weights[PRESET_PROBE].shape)
        raise ModelError(f"{where}: this is a {guessed} checkpoint ({PRESET_PROBE} {rows}), not {preset}")
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelError(f"{where}: checkpoint lacks {missing[0]}{more}, which {preset} has")
    unexpected = sorted(set(weights) - set(own))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ModelError(f"{where}: checkpoint has {unexpected[0]}{more}, which {preset} does not")
    for name, tensor in own.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise ModelError(
                f"{where}: {name} has shape {tuple(weights[name].shape)}, {preset} expects {tuple(tensor.shape)}"
            )
