"""Released-checkpoint import: strict loading by the official names and shapes, and one clear line for every
kind of bad file, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from netroller.cli.main import main
from netroller.errors import ModelError
from netroller.models.vad.checkpoint import check_weights
from netroller.models.vad.config import vad_base
from netroller.models.vad.detector import VAD
from netroller.stages.train import load_run
from netroller.stages.vad_import import import_checkpoint

FIXTURES = Path(__file__).parents[1] / "fixtures" / "vad"


def official_like(preset: str) -> dict[str, torch.Tensor]:
    """A state dict with the official names, shapes and dtypes; tensor i holds the constant i + 0.5 (an
    expanded scalar, so the file stays small while a swapped or dropped tensor still shows)."""
    inventory = json.loads((FIXTURES / f"state_dict_{preset}.json").read_text())
    out = {}
    for i, (name, shape) in enumerate(inventory["tensors"].items()):
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(i, dtype=torch.long)
        else:
            out[name] = torch.full((1,) * len(shape), i + 0.5).expand(*shape)
    return out


def save_mmcv(weights: dict, path: Path) -> Path:
    torch.save(
        {"meta": {"epoch": 60, "mmcv_version": "1.4.0", "CLASSES": ["car"]}, "state_dict": weights}, path
    )
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_mmcv(official_like("tiny"), tmp_path_factory.mktemp("ckpt") / "VAD_tiny.pth")


def test_an_official_tiny_checkpoint_imports_into_a_run_that_loads_every_tensor(tiny_checkpoint, tmp_path):
    run = import_checkpoint(tiny_checkpoint, "vad-tiny", tmp_path / "run")
    model, cfg, train_cfg = load_run(run)
    assert train_cfg is None and cfg.bev_h == 100
    expected = official_like("tiny")
    own = model.state_dict()
    assert set(own) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(own[name].to(tensor.dtype), tensor), name
    record = json.loads((run / "imported.json").read_text())
    assert record["recipe"] == "vad-tiny" and record["num_tensors"] == 746 and record["meta"]["epoch"] == 60


def test_vad_base_names_and_shapes_load_strictly():
    model = VAD(vad_base())
    weights = official_like("base")
    check_weights(model, weights, Path("VAD_base.pth"), "vad-base")
    model.load_state_dict(weights, strict=True)
    assert len(model.state_dict()) == 1062


def _refused(path: Path, recipe: str, out: Path, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        import_checkpoint(path, recipe, out)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def test_a_checkpoint_of_the_other_preset_is_named(tmp_path):
    path = save_mmcv(official_like("base"), tmp_path / "VAD_base.pth")
    _refused(path, "vad-tiny", tmp_path / "run", r"this is a vad-base checkpoint .* not vad-tiny")


def test_a_truncated_checkpoint_is_refused(tiny_checkpoint, tmp_path):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(tiny_checkpoint.read_bytes()[:2000])
    _refused(cut, "vad-tiny", tmp_path / "run", "not a readable PyTorch checkpoint")


def test_a_missing_tensor_is_named(tmp_path):
    weights = official_like("tiny")
    del weights["pts_bbox_head.ego_query.weight"]
    path = save_mmcv(weights, tmp_path / "missing.pth")
    _refused(
        path, "vad-tiny", tmp_path / "run", r"lacks pts_bbox_head\.ego_query\.weight, which vad-tiny has"
    )


def test_an_extra_tensor_is_named(tmp_path):
    weights = official_like("tiny")
    weights["pts_bbox_head.extra.weight"] = torch.zeros(2)
    path = save_mmcv(weights, tmp_path / "extra.pth")
    _refused(path, "vad-tiny", tmp_path / "run", r"has pts_bbox_head\.extra\.weight, which vad-tiny does not")


def test_a_wrong_shape_is_named(tmp_path):
    weights = official_like("tiny")
    weights["pts_bbox_head.ego_fut_decoder.2.weight"] = torch.zeros(3, 512)
    path = save_mmcv(weights, tmp_path / "shape.pth")
    _refused(
        path,
        "vad-tiny",
        tmp_path / "run",
        r"ego_fut_decoder\.2\.weight has shape \(3, 512\), vad-tiny expects",
    )


def test_a_file_without_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": [1, 2]}, path)
    _refused(path, "vad-tiny", tmp_path / "run", "holds no 'state_dict' of tensors")


def test_cli_import_errors_are_one_line(tmp_path, capsys):
    code = main(
        ["vad", "import", str(tmp_path / "nope.pth"), "--recipe", "vad-tiny", "--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no such checkpoint file" in err[0]
