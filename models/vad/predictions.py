"""VAD's outputs decoded into per-sample predictions in the index's conventions
(`netroller.data.index`: lidar frame, yaw counter-clockwise from +x, z at the box centre, positions rather
than per-step offsets), as the metrics and the predictions file read them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from netroller.models.vad.coders import decode_detections, decode_map
from netroller.models.vad.config import VADConfig
from netroller.models.vad.outputs import VADOutputs
from netroller.models.vad.targets import vad_yaw


@dataclass
class VADPrediction:
    """Decoded predictions of one sample: numpy, lidar frame, `netroller.data.index` conventions."""

    sample_token: str
    boxes: np.ndarray  # (K, 9) x, y, z, w, l, h, yaw, vx, vy
    scores: np.ndarray  # (K,)
    labels: np.ndarray  # (K,) into DETECTION_CLASSES
    agent_fut_traj: np.ndarray  # (K, modes, steps, 2) positions relative to the box centre
    agent_fut_scores: np.ndarray  # (K, modes) softmax over modes
    map_vectors: np.ndarray  # (M, P, 2) metres
    map_scores: np.ndarray  # (M,)
    map_labels: np.ndarray  # (M,) into MAP_CLASSES
    plan_traj: np.ndarray  # (steps, 2) positions, the mode of the sample's command


def plan_positions(outputs: VADOutputs, command: torch.Tensor) -> torch.Tensor:
    """[B, fut_ts, 2]: the plan mode each sample's command selects, offsets summed into positions."""
    idx = command.long().to(outputs.ego_fut_preds.device).view(-1, 1, 1, 1)
    chosen = outputs.ego_fut_preds.gather(1, idx.expand(-1, 1, *outputs.ego_fut_preds.shape[2:])).squeeze(1)
    return chosen.float().cumsum(dim=1)


@torch.no_grad()
def decode(
    outputs: VADOutputs, sample_tokens: list[str], command: torch.Tensor, cfg: VADConfig
) -> list[VADPrediction]:
    """The official NMS-free decoding of boxes and map vectors, turned into the index's conventions."""
    dets = decode_detections(outputs, cfg)
    maps = decode_map(outputs, cfg)
    plans = plan_positions(outputs, command).cpu().numpy()
    mode_scores = outputs.all_traj_cls_scores[-1].float().softmax(-1).cpu().numpy()  # [B, A, modes]
    preds = []
    for b, token in enumerate(sample_tokens):
        d, m = dets[b], maps[b]
        boxes = d.boxes.astype(np.float64).copy()
        boxes[:, 2] += boxes[:, 5] / 2  # bottom centre -> centre
        boxes[:, 6] = vad_yaw(boxes[:, 6])  # VAD's yaw -> the index's
        trajs = d.trajs.reshape(len(boxes), cfg.fut_mode, cfg.fut_ts, 2).cumsum(axis=2)
        preds.append(
            VADPrediction(
                sample_token=token,
                boxes=boxes,
                scores=d.scores,
                labels=d.labels.astype(np.int64),
                agent_fut_traj=trajs,
                agent_fut_scores=mode_scores[b, d.queries],
                map_vectors=m.points,
                map_scores=m.scores,
                map_labels=m.labels.astype(np.int64),
                plan_traj=plans[b],
            )
        )
    return preds
