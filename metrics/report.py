"""The Markdown evaluation report: a metric table beside VAD's published figures, and plain provenance notes.

The notes say, where it is so, that the data is the synthetic nuScenes-format set and that the GM behind a
run's latents is the random-weight stand-in, so no figure is mistaken for a nuScenes result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from netroller.data.index import MAP_CLASSES

# VAD paper, nuScenes val (DESIGN.md section 6): L2 in metres (VAD convention), collision in %.
PUBLISHED = {
    "VAD-Tiny": {
        "plan_l2_1s": 0.46,
        "plan_l2_2s": 0.76,
        "plan_l2_3s": 1.12,
        "plan_col_1s": 0.21,
        "plan_col_2s": 0.35,
        "plan_col_3s": 0.58,
    },
    "VAD-Base": {
        "plan_l2_1s": 0.41,
        "plan_l2_2s": 0.70,
        "plan_l2_3s": 1.05,
        "plan_col_1s": 0.07,
        "plan_col_2s": 0.17,
        "plan_col_3s": 0.41,
    },
}

_ROWS = (
    ("plan_l2_1s", "L2 1 s (m, VAD: mean to 1 s)"),
    ("plan_l2_2s", "L2 2 s (m, VAD)"),
    ("plan_l2_3s", "L2 3 s (m, VAD)"),
    ("plan_l2_at_1s", "L2 at 1 s (m, UniAD: at the time)"),
    ("plan_l2_at_2s", "L2 at 2 s (m, UniAD)"),
    ("plan_l2_at_3s", "L2 at 3 s (m, UniAD)"),
    ("plan_col_1s", "Collision 1 s (%, ST-P3 box)"),
    ("plan_col_2s", "Collision 2 s (%)"),
    ("plan_col_3s", "Collision 3 s (%)"),
    ("det_nds", "NDS (30 m x 60 m range)"),
    ("det_map", "Detection mAP"),
    ("map_ap", "Map AP (Chamfer 0.5/1.0/1.5 m)"),
    *((f"map_ap_{c}", f"Map AP {c}") for c in MAP_CLASSES),
)

# The synthetic generator describes every scene it writes with this prefix in the devkit's scene table.
SYNTHETIC_PREFIX = "Synthetic:"


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _fmt_ref(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"  # the paper gives two decimals


def is_synthetic(scene_descriptions: Iterable[str]) -> bool:
    """Whether the evaluated scenes come from the synthetic generator (their description says so)."""
    return any(d.startswith(SYNTHETIC_PREFIX) for d in scene_descriptions)


def data_note(dataroot: Path, version: str, *, synthetic: bool) -> str:
    """One line on what the data is: the synthetic set or nuScenes."""
    if synthetic:
        return (
            f"**Data: synthetic.** The samples come from NetRoller's synthetic nuScenes-format generator "
            f"({dataroot}, {version}), not from nuScenes; the figures test the pipeline and are not "
            "comparable with published nuScenes results."
        )
    return f"Data: nuScenes {version} at {dataroot}."


def gm_note(cache: Path | None) -> str:
    """One line on the GM behind the run's latents: none, the random-weight stand-in, or a named model."""
    if cache is None:
        return "GM: none (a VAD-only run, no latents)."
    from netroller.models.gm.tiny import STAND_IN_FILE
    from netroller.storage.meta import read_meta

    key = read_meta(cache).key
    model = key.model
    if key.model_stand_in or (Path(model) / STAND_IN_FILE).is_file():
        return (
            f"**GM: random-weight stand-in** ({model}). Its latents carry no knowledge; any effect of the "
            "adapter here is not a NetRoller result."
        )
    return f"GM: {model} (latents from {cache})."


def render_report(
    metrics: Mapping[str, object],
    *,
    run: Path,
    split: str,
    notes: Sequence[str],
    plots: Sequence[str],
) -> str:
    """The report.md text: header, notes, the metric table, per-class detection AP, the plots."""
    lines = [
        f"# Evaluation of `{Path(run).name}`",
        "",
        f"Recipe `{metrics.get('recipe')}`, split `{split}`, {metrics.get('num_samples')} samples "
        f"({metrics.get('num_planning_samples')} with all 6 future frames for planning).",
        "",
        *(f"- {n}" for n in notes),
        "",
        "| metric | this run | VAD-Tiny (paper) | VAD-Base (paper) |",
        "|---|---|---|---|",
    ]
    for key, label in _ROWS:
        refs = [_fmt_ref(PUBLISHED[name].get(key)) for name in ("VAD-Tiny", "VAD-Base")]
        lines.append(f"| {label} | {_fmt(metrics.get(key))} | {refs[0]} | {refs[1]} |")
    det_classes = sorted(k for k in metrics if k.startswith("det_ap_"))
    if det_classes:
        lines += ["", "Detection AP per class (classes with GT in range):", ""]
        lines += ["| class | AP |", "|---|---|"]
        lines += [f"| {k.removeprefix('det_ap_')} | {_fmt(metrics[k])} |" for k in det_classes]
    lines += [
        "",
        "Conventions: L2 at N s is the mean over the steps up to N s (VAD); the at-time figure (UniAD) is "
        "separate. Collision is ST-P3's box check on a 0.5 m grid, steps where the GT ego already collides "
        "skipped. Detection is nuscenes-devkit DetectionEval restricted to |x| <= 15 m, |y| <= 30 m.",
    ]
    if plots:
        lines += ["", "## Samples", ""]
        lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def metrics_json(metrics: Mapping[str, object]) -> str:
    """metrics.json text: NaN (undefined) becomes null so the file is strict JSON."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    return json.dumps(clean, indent=2, sort_keys=True) + "\n"
