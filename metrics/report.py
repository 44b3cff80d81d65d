"""The Markdown evaluation report: a metric table beside VAD's published figures, and plain provenance notes.

The notes say, where it is so, that the data is the synthetic nuScenes-format set and that the GM behind a
run's latents is the random-weight stand-in, so no figure is mistaken for a nuScenes result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from netroller.data.index import MAP_CLASSES


@dataclass(frozen=True)
class PublishedRow:
    """Published nuScenes-val figures of one model (DESIGN.md section 6), at the precision printed."""

    name: str
    source: str
    decimals: int
    metrics: dict[str, float]


# L2 in metres (VAD convention), collision in % (VAD's obj_box_col); "avg" is the mean of 1, 2 and 3 s.
PUBLISHED = (
    PublishedRow(
        "VAD-Tiny",
        "VAD paper",
        2,
        {"plan_l2_1s": 0.46, "plan_l2_2s": 0.76, "plan_l2_3s": 1.12}
        | {"plan_col_1s": 0.21, "plan_col_2s": 0.35, "plan_col_3s": 0.58},
    ),
    PublishedRow(
        "VAD-Base",
        "VAD paper",
        2,
        {"plan_l2_1s": 0.41, "plan_l2_2s": 0.70, "plan_l2_3s": 1.05}
        | {"plan_col_1s": 0.07, "plan_col_2s": 0.17, "plan_col_3s": 0.41},
    ),
    PublishedRow(
        "VAD-Base re-run",
        "NetRoller paper",
        4,
        {"plan_l2_avg": 0.7175, "plan_col_avg": 0.1900, "det_nds": 0.4593, "map_ap": 0.4786},
    ),
    PublishedRow(
        "NetRoller Bias-C1-PEl",
        "NetRoller paper",
        4,
        {"plan_l2_avg": 0.6830, "plan_col_avg": 0.1628, "det_nds": 0.4700},
    ),
    PublishedRow("NetRoller TF-C0", "NetRoller paper", 4, {"plan_l2_avg": 0.6380, "plan_col_avg": 0.1923}),
)


def with_averages(metrics: Mapping[str, object]) -> dict:
    """The metrics plus `plan_l2_avg` and `plan_col_avg` (mean of the 1, 2 and 3 s values) where all three
    are there; a figure already given (a published average) is kept."""
    out = dict(metrics)
    for prefix in ("plan_l2", "plan_col"):
        values = [out.get(f"{prefix}_{n}s") for n in (1, 2, 3)]
        if f"{prefix}_avg" not in out and all(isinstance(v, (int, float)) for v in values):
            out[f"{prefix}_avg"] = sum(values) / 3
    return out


_ROWS = (
    ("plan_l2_1s", "L2 1 s (m, VAD: mean to 1 s)"),
    ("plan_l2_2s", "L2 2 s (m, VAD)"),
    ("plan_l2_3s", "L2 3 s (m, VAD)"),
    ("plan_l2_avg", "L2 avg (m, VAD)"),
    ("plan_l2_at_1s", "L2 at 1 s (m, UniAD: at the time)"),
    ("plan_l2_at_2s", "L2 at 2 s (m, UniAD)"),
    ("plan_l2_at_3s", "L2 at 3 s (m, UniAD)"),
    ("plan_col_1s", "Collision 1 s (%, VAD's obj_box_col)"),
    ("plan_col_2s", "Collision 2 s (%, VAD's)"),
    ("plan_col_3s", "Collision 3 s (%, VAD's)"),
    ("plan_col_avg", "Collision avg (%, VAD's)"),
    ("plan_col_exact_1s", "Collision 1 s (%, ours: exact geometry, not comparable)"),
    ("plan_col_exact_2s", "Collision 2 s (%, ours, exact)"),
    ("plan_col_exact_3s", "Collision 3 s (%, ours, exact)"),
    ("det_nds", "NDS (VAD's evaluation)"),
    ("det_map", "Detection mAP (VAD's evaluation)"),
    ("map_ap", "Map mAP (VAD's Chamfer AP, 0.5/1.0/1.5 m)"),
    *((f"map_ap_{c}", f"Map AP {c}") for c in MAP_CLASSES),
)

# The synthetic generator describes every scene it writes with this prefix in the devkit's scene table.
SYNTHETIC_PREFIX = "Synthetic:"


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def fmt_published(row: PublishedRow, key: str) -> str:
    """A published figure at the precision printed; an average of printed figures gets two more digits."""
    value = with_averages(row.metrics).get(key)
    if value is None:
        return "n/a"
    return f"{value:.{row.decimals if key in row.metrics else row.decimals + 2}f}"


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


PRIVILEGED_LABEL = "privileged latents: a check of the pipeline, not a result"
"""The label of every row and report of the positive control (latents teacher-forced on ground-truth futures)."""


def privileged_note() -> str:
    """One line on the positive control's latents: they carry the ground truth, so its gain proves only that
    information flows GM -> cache -> adapter -> shift -> plan."""
    return (
        f"**{PRIVILEGED_LABEL.capitalize()}.** The GM was teacher-forced on answers stating the ego's "
        "ground-truth future (speed and positions over the next 3 s); a gain here shows that information "
        "reaches the plan through the cache and the adapter, not that a GM helps driving."
    )


def gm_note(cache: Path | None, *, pairing: str | None = None) -> str:
    """One line on the GM behind the run's latents: none, the random-weight stand-in, or a named model; how
    its latents were made; and the run's pairing with them when it is not the one it was trained on."""
    if cache is None:
        return "GM: none (a VAD-only run, no latents)."
    from netroller.models.gm.tiny import STAND_IN_FILE
    from netroller.storage.meta import read_meta

    key = read_meta(cache).key
    model = key.model
    how = f"{key.latents} latents" + (f", {key.decode}" if key.latents == "generated" else "")
    how += f", T={key.tokens}, GM in {key.compute_dtype}"
    paired = f" **Pairing: {pairing}** (the authors' setting)." if pairing else ""
    if key.model_stand_in or (Path(model) / STAND_IN_FILE).is_file():
        return (
            f"**GM: random-weight stand-in** ({model}; {how}). Its latents carry no knowledge; any effect of "
            f"the adapter here is not a NetRoller result.{paired}"
        )
    return f"GM: {model} ({how}; latents from {cache}).{paired}"


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
        "| metric | this run | " + " | ".join(f"{r.name} ({r.source})" for r in PUBLISHED) + " |",
        "|---|---|" + "---|" * len(PUBLISHED),
    ]
    ours = with_averages(metrics)
    for key, label in _ROWS:
        refs = [fmt_published(r, key) for r in PUBLISHED]
        lines.append(f"| {label} | {_fmt(ours.get(key))} | " + " | ".join(refs) + " |")
    det_classes = sorted(k for k in metrics if k.startswith("det_ap_"))
    if det_classes:
        lines += ["", "Detection AP per class (VAD's evaluation):", ""]
        lines += ["| class | AP |", "|---|---|"]
        lines += [f"| {k.removeprefix('det_ap_')} | {_fmt(metrics[k])} |" for k in det_classes]
    lines += [
        "",
        "Conventions: every figure but the exact collision is computed as VAD's own evaluation code computes "
        "it, so it can be put beside the published columns (nuScenes val; a run on other data cannot). L2 at "
        "N s is the mean over the steps up to N s (VAD); the at-time figure (UniAD) is separate. Collision is "
        "VAD's obj_box_col (ST-P3's grid check, OpenCV-filled agent boxes, an unrotated ego footprint, steps "
        "where the GT ego already collides skipped); the exact collision is ours and not comparable. "
        "Detection is nuscenes-devkit DetectionEval with VAD's filters (scores >= 0.2; a 60 m x 30 m range); "
        "map mAP is VAD's Chamfer AP over the three classes. metrics.json also holds VAD's own key names.",
    ]
    if plots:
        lines += ["", "## Samples", ""]
        lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def metrics_json(metrics: Mapping[str, object]) -> str:
    """metrics.json text: NaN (undefined) becomes null so the file is strict JSON."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    return json.dumps(clean, indent=2, sort_keys=True) + "\n"
