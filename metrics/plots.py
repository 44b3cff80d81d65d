"""Evaluation pictures (matplotlib Agg): a BEV view and the front camera with projected boxes.

BEV: lidar frame, x to the right, y up the page (forward), over VAD's range with a margin. GT in green
(boxes, ego trajectory), predictions in red (boxes above `score_min`, the plan), map vectors by class (GT
thin and grey-toned, predictions above `map_score_min` in colour). Front camera: the original image with
the 3D boxes projected through the record's lidar-to-image matrix (only boxes whose 8 corners are all in
front of the camera).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from netroller.data.index import MAP_CLASSES, SampleRecord  # noqa: E402
from netroller.metrics.collision_exact import box_corners, ego_boxes  # noqa: E402

_MAP_COLOURS = {"divider": "tab:orange", "ped_crossing": "tab:blue", "boundary": "tab:purple"}
# The 12 edges of a box from `corners_3d`: bottom face 0-3, top face 4-7.
_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def corners_3d(box: np.ndarray) -> np.ndarray:
    """(8, 3) corners of an index-convention box `(x, y, z, w, l, h, yaw, ...)`, z the geometric centre."""
    x, y, z, w, length, h, yaw = (float(v) for v in box[:7])
    ground = box_corners(np.array([x, y]), w, length, yaw)  # (4, 2)
    bottom = np.concatenate([ground, np.full((4, 1), z - h / 2)], axis=1)
    top = np.concatenate([ground, np.full((4, 1), z + h / 2)], axis=1)
    return np.concatenate([bottom, top], axis=0)


def _draw_boxes_bev(ax, boxes: np.ndarray, colour: str, style: str) -> None:
    for box in boxes:
        c = box_corners(box[:2], box[3], box[4], box[6])
        ax.fill(c[:, 0], c[:, 1], fill=False, edgecolor=colour, linestyle=style, linewidth=1.0)
        front = (c[0] + c[3]) / 2  # mark the heading
        ax.plot([box[0], front[0]], [box[1], front[1]], color=colour, linewidth=0.8)


def plot_bev(
    record: SampleRecord, pred, out: Path, *, score_min: float = 0.3, map_score_min: float = 0.4
) -> Path:
    """Write a BEV PNG of one sample: GT vs predicted boxes, map vectors, GT vs planned trajectory."""
    fig, ax = plt.subplots(figsize=(5, 8), dpi=100)
    for vec, label in zip(record.map_vectors, record.map_labels, strict=True):
        ax.plot(vec[:, 0], vec[:, 1], color=_MAP_COLOURS[MAP_CLASSES[int(label)]], alpha=0.35, linewidth=3)
    keep = np.asarray(pred.map_scores) >= map_score_min
    for vec, label in zip(np.asarray(pred.map_vectors)[keep], np.asarray(pred.map_labels)[keep], strict=True):
        ax.plot(
            vec[:, 0], vec[:, 1], color=_MAP_COLOURS[MAP_CLASSES[int(label)]], linewidth=1, linestyle="--"
        )
    _draw_boxes_bev(ax, record.gt_boxes, "tab:green", "-")
    _draw_boxes_bev(ax, np.asarray(pred.boxes)[np.asarray(pred.scores) >= score_min], "tab:red", "--")
    ego = ego_boxes(np.zeros((1, 2)))[0]  # the footprint the collision check uses
    ax.fill(ego[:, 0], ego[:, 1], color="black", alpha=0.6)
    valid = record.ego_fut_mask > 0.5
    gt = np.concatenate([np.zeros((1, 2)), record.ego_fut_traj[valid]])
    plan = np.concatenate([np.zeros((1, 2)), np.asarray(pred.plan_traj)])
    ax.plot(gt[:, 0], gt[:, 1], "o-", color="tab:green", markersize=3, label="GT trajectory")
    ax.plot(plan[:, 0], plan[:, 1], "o-", color="tab:red", markersize=3, label="plan")
    ax.set_xlim(-20, 20)
    ax.set_ylim(-35, 35)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, right)")
    ax.set_ylabel("y (m, forward)")
    title = f"{record.scene_name} #{record.frame_index}\nGT green; prediction red (boxes with score >= {score_min})"
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _draw_boxes_cam(ax, boxes: np.ndarray, lidar_to_image: np.ndarray, colour: str) -> None:
    for box in boxes:
        pts = corners_3d(box)
        hom = np.concatenate([pts, np.ones((8, 1))], axis=1) @ lidar_to_image.T  # (8, 4)
        if np.any(hom[:, 2] < 0.1):
            continue  # partly behind the camera: a projection would wrap around
        uv = hom[:, :2] / hom[:, 2:3]
        for a, b in _EDGES:
            ax.plot(uv[[a, b], 0], uv[[a, b], 1], color=colour, linewidth=1.0)


def plot_front_camera(
    record: SampleRecord, pred, dataroot: Path, out: Path, *, score_min: float = 0.3
) -> Path:
    """Write the CAM_FRONT image with projected GT (green) and predicted (red) boxes."""
    image = np.asarray(Image.open(Path(dataroot) / record.cam_paths[0]).convert("RGB"))
    proj = record.lidar_to_image()[0]
    h, w = image.shape[:2]
    inches = min(1.0, 960 / w) * w / 100  # at most 960 px wide: a picture to look at, not an archive
    fig, ax = plt.subplots(figsize=(inches, inches * h / w), dpi=100)
    ax.imshow(image)
    _draw_boxes_cam(ax, record.gt_boxes, proj, "lime")
    _draw_boxes_cam(ax, np.asarray(pred.boxes)[np.asarray(pred.scores) >= score_min], proj, "red")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1)
    fig.savefig(out)
    plt.close(fig)
    return out
