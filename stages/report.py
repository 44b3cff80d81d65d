"""`netroller report RUN...`: several runs' evaluations in one Markdown table, with plots.

Every `RUN/eval*/metrics.json` becomes a row. With `--index`, the first row is a planner without a model
(`netroller.metrics.reference`: the per-command mean of the training futures). Rows are ordered baseline, NetRoller variants, controls
(shuffled latents), lags, then the positive control (an evaluation with `privileged_latents`: latents
teacher-forced on the ground-truth future, labelled "privileged latents: a check of the pipeline, not a
result"), its shuffled control and its lags; below them the published nuScenes-val rows of VAD-Tiny, VAD-Base and the
NetRoller paper (`netroller.metrics.report.PUBLISHED`), labelled as published. Columns are VAD's planning
metrics (L2 and collision at 1/2/3 s and their average), NDS, detection mAP and map mAP, all computed as
VAD's own evaluation computes them, so a run's row can be read against the published ones.

    netroller report work/runs/baseline work/runs/bias-query work/runs/tf-query --out work/report.md
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netroller.errors import ConfigError, MissingPathError
from netroller.metrics.reference import REFERENCE_LABEL
from netroller.metrics.report import PRIVILEGED_LABEL, PUBLISHED, fmt_published, with_averages
from netroller.storage.atomic import atomic_path

COLUMNS = (
    ("plan_l2_1s", "L2 1s"),
    ("plan_l2_2s", "L2 2s"),
    ("plan_l2_3s", "L2 3s"),
    ("plan_l2_avg", "L2 avg"),
    ("plan_col_1s", "Col 1s"),
    ("plan_col_2s", "Col 2s"),
    ("plan_col_3s", "Col 3s"),
    ("plan_col_avg", "Col avg"),
    ("det_nds", "NDS"),
    ("det_map", "mAP"),
    ("map_ap", "map mAP"),
)
_KIND_ORDER = {
    "reference": -1,
    "baseline": 0,
    "netroller": 1,
    "control": 2,
    "lag": 3,
    "privileged": 4,
    "privileged control": 5,
    "privileged lag": 6,
}


@dataclass(frozen=True)
class Row:
    run: str
    variant: str  # eval folder name: eval, eval-lag3, eval-shuffled
    kind: str  # reference | baseline | netroller | control | lag, or privileged | privileged control | ...
    lag: int
    metrics: dict

    @property
    def label(self) -> str:
        if self.kind == "reference":
            return self.metrics["reference_planner"]
        label = self.run if self.variant == "eval" else f"{self.run} ({self.variant.removeprefix('eval-')})"
        if self.metrics.get("latent_pairing"):
            label += " [trained teacher-forced, eval generated]"
        if self.metrics.get("privileged_latents"):
            label += f" [{PRIVILEGED_LABEL}]"
        return label


def _kind(run: Path, variant: str, metrics: dict) -> tuple[str, int]:
    """The row's kind: the run's own setting (the lag and policy it was trained at) is its "netroller" row,
    other lags are "lag" rows, shuffled latents a "control"."""
    saved = run / "netroller.json"
    if not saved.is_file():
        return "baseline", 0
    nr = json.loads(saved.read_text())["netroller"]
    lag = int(metrics.get("latent_lag") or 0)
    own = lag == int(nr.get("latent_lag") or 0) and (
        not lag or metrics.get("lag_policy", "exact") == nr.get("lag_policy", "exact")
    )
    prefix = "privileged " if metrics.get("privileged_latents") else ""
    if metrics.get("shuffled_latents"):
        return f"{prefix}control", lag
    if not own:
        return f"{prefix}lag", lag
    return prefix.strip() or "netroller", lag


def reference_row(index: Path, split: str = "val") -> Row:
    """The row of the planner without a model (`netroller.metrics.reference`) on the index's `split`."""
    from netroller.data.index import read_index
    from netroller.metrics.reference import reference_metrics

    return Row("reference", "eval", "reference", 0, reference_metrics(read_index(index), split))


def collect(runs: Sequence[Path], *, index: Path | None = None) -> list[Row]:
    """One row per evaluation of each run, in report order; with `index`, first the row of the planner
    without a model on the split the runs were evaluated on."""
    rows = []
    for run in map(Path, runs):
        if not run.is_dir():
            raise MissingPathError(f"run folder not found: {run}")
        evals = sorted(
            p for p in run.glob("eval*/metrics.json") if re.fullmatch(r"eval(-[\w.-]+)?", p.parent.name)
        )
        if not evals:
            raise MissingPathError(
                f"{run}: no evaluation yet (no eval*/metrics.json); run `netroller eval` first"
            )
        for path in evals:
            metrics = json.loads(path.read_text())
            kind, lag = _kind(run, path.parent.name, metrics)
            rows.append(Row(run.name, path.parent.name, kind, lag, metrics))
    if index is not None:
        splits = {r.metrics.get("split", "val") for r in rows}
        if len(splits) != 1:
            raise ConfigError(f"report: the runs were evaluated on several splits ({sorted(splits)})")
        rows.append(reference_row(index, splits.pop()))
    return sorted(rows, key=lambda r: (_KIND_ORDER[r.kind], r.lag, r.run, r.variant))


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


def table(rows: Sequence[Row]) -> str:
    """The Markdown comparison table: the runs, then the published rows."""
    head = "| run | kind | " + " | ".join(name for _, name in COLUMNS) + " |"
    sep = "|---|---|" + "---:|" * len(COLUMNS)
    lines = [head, sep]
    for r in rows:
        kind = f"{r.kind} {r.lag}" if r.kind.endswith("lag") else r.kind
        metrics = with_averages(r.metrics)
        cells = " | ".join(_fmt(metrics.get(k)) for k, _ in COLUMNS)
        lines.append(f"| {r.label} | {kind} | {cells} |")
    for p in PUBLISHED:
        cells = " | ".join(fmt_published(p, k) for k, _ in COLUMNS)
        lines.append(f"| {p.name} | published ({p.source}) | {cells} |")
    return "\n".join(lines)


def scene_table(rows: Sequence[Row]) -> str:
    """L2 avg (mean of 1, 2 and 3 s, VAD's convention) of each row on each scene of the split, as
    `metrics.json: plan_l2_by_scene` holds it; empty when no row has it (evaluations from before)."""
    scenes = sorted({s for r in rows for s in r.metrics.get("plan_l2_by_scene") or {}})
    if not scenes:
        return ""
    lines = ["| run | kind | " + " | ".join(scenes) + " |", "|---|---|" + "---:|" * len(scenes)]
    for r in rows:
        by_scene = r.metrics.get("plan_l2_by_scene") or {}
        kind = f"{r.kind} {r.lag}" if r.kind.endswith("lag") else r.kind
        cells = " | ".join(_fmt(with_averages(by_scene.get(s) or {}).get("plan_l2_avg")) for s in scenes)
        lines.append(f"| {r.label} | {kind} | {cells} |")
    return "\n".join(lines)


def plot(rows: Sequence[Row], folder: Path) -> list[Path]:
    """Bar charts of L2 / collision per row, and L2 against the latent lag where a sweep exists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 2))
    labels = [r.label for r in rows]
    for ax, prefix, title in ((axes[0], "plan_l2", "L2 (m, VAD)"), (axes[1], "plan_col", "Collision (%)")):
        for i, horizon in enumerate(("1s", "2s", "3s")):
            vals = [r.metrics.get(f"{prefix}_{horizon}") or 0.0 for r in rows]
            ax.barh([y + 0.27 * (i - 1) for y in range(len(rows))], vals, height=0.27, label=horizon)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.append(folder / "planning.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)

    sweeps: dict[str, list[Row]] = {}
    for r in rows:
        if r.kind in ("netroller", "lag", "privileged", "privileged lag"):
            sweeps.setdefault(r.run, []).append(r)
    sweeps = {k: sorted(v, key=lambda r: r.lag) for k, v in sweeps.items() if len(v) > 1}
    if sweeps:
        fig, ax = plt.subplots(figsize=(6, 4))
        for run, rs in sweeps.items():
            ax.plot(
                [r.lag for r in rs], [r.metrics.get("plan_l2_3s") or math.nan for r in rs], "o-", label=run
            )
        ax.set_xlabel("latent lag (keyframes, 0.5 s each)")
        ax.set_ylabel("L2 3 s (m, VAD)")
        ax.set_title("GM/SM asynchrony")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out.append(folder / "lag_sweep.png")
        fig.savefig(out[-1], dpi=100)
        plt.close(fig)
    return out


def render(
    rows: Sequence[Row], *, notes: Sequence[str] = (), plots: Sequence[Path] = (), base: Path | None = None
) -> str:
    lines = ["# NetRoller comparison", ""]
    lines += [f"> {n}" for n in notes]
    if notes:
        lines.append("")
    lines += [
        table(rows),
        "",
        "Every figure is computed as VAD's own evaluation code computes it: L2 in metres (mean over the steps "
        "up to N s), collision in % (VAD's obj_box_col), NDS and mAP from nuscenes-devkit DetectionEval with "
        "VAD's filters, map mAP VAD's Chamfer AP over 0.5/1.0/1.5 m; avg is the mean of 1, 2 and 3 s. "
        "`published` rows are the papers' nuScenes-val figures (n/a: not published), not runs of this "
        "project; a run on other data is not comparable with them. `control`: shuffled latents (every sample "
        "gets another sample's GM latents); `lag N`: the SM at t reads the GM latents of t - N. `privileged` "
        f"rows ({PRIVILEGED_LABEL}): the GM read answers stating the ego's ground-truth future, in training and "
        "in eval; they must beat the baseline, and their shuffled control and longer lags must lose the gain. "
        f"`reference` ({REFERENCE_LABEL}): every sample's plan is the mean training future of its driving "
        "command; it reads no input, so a model that does not beat it has not learned the future from its "
        "inputs.",
        "",
    ]
    if per_scene := scene_table(rows):
        lines += ["L2 avg (m, VAD) on each scene of the split:", "", per_scene, ""]
    for p in plots:
        rel = p.relative_to(base) if base is not None else p
        lines += [f"![{p.stem}]({rel})", ""]
    return "\n".join(lines)


def write_report(
    runs: Sequence[Path], out: Path, *, notes: Sequence[str] = (), index: Path | None = None
) -> Path:
    """Write the report (and its plots beside it, in <stem>_plots/) atomically; returns `out`. With `index`,
    the planner without a model is its first row."""
    rows = collect(runs, index=index)
    out = Path(out)
    plots_dir = out.parent / f"{out.stem}_plots"
    plots = plot(rows, plots_dir)
    with atomic_path(out) as tmp:
        tmp.write_text(render(rows, notes=notes, plots=plots, base=out.parent))
    return out
