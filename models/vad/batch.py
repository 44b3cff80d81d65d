"""VAD's batch types: inputs from sensor data only, targets from annotations only (navsim's rule), so
ground truth cannot leak into the model: `VAD.forward` takes `VADInputs` and nothing else."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class VADInputs:
    """What the car knows at the sample's time."""

    images: Tensor  # [B, 6, 3, H, W] ImageNet-normalized, CAMERAS order
    lidar_to_image: Tensor  # [B, 6, 4, 4] lidar frame -> pixels of the resized images
    command: Tensor  # [B] long: 0 right, 1 left, 2 straight; selects the plan mode
    ego_velocity: Tensor  # [B, 2] m/s, lidar frame

    def to(self, device: torch.device | str) -> VADInputs:
        return VADInputs(
            images=self.images.to(device),
            lidar_to_image=self.lidar_to_image.to(device),
            command=self.command.to(device),
            ego_velocity=self.ego_velocity.to(device),
        )

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])


@dataclass
class VADTargets:
    """Annotations, per sample (ragged lists) or batched where the shape is fixed."""

    boxes: list[Tensor]  # per sample [N, 9] x, y, z, w, l, h, yaw, vx, vy
    labels: list[Tensor]  # per sample [N] long into DETECTION_CLASSES
    agent_fut_traj: list[Tensor]  # per sample [N, 6, 2] positions relative to each box centre
    agent_fut_mask: list[Tensor]  # per sample [N, 6]
    map_vectors: list[Tensor]  # per sample [M, 20, 2]
    map_labels: list[Tensor]  # per sample [M] long into MAP_CLASSES
    ego_fut_traj: Tensor  # [B, 6, 2]
    ego_fut_mask: Tensor  # [B, 6]

    def to(self, device: torch.device | str) -> VADTargets:
        def move(ts: list[Tensor]) -> list[Tensor]:
            return [t.to(device) for t in ts]

        return VADTargets(
            boxes=move(self.boxes),
            labels=move(self.labels),
            agent_fut_traj=move(self.agent_fut_traj),
            agent_fut_mask=move(self.agent_fut_mask),
            map_vectors=move(self.map_vectors),
            map_labels=move(self.map_labels),
            ego_fut_traj=self.ego_fut_traj.to(device),
            ego_fut_mask=self.ego_fut_mask.to(device),
        )


@dataclass
class LatentInputs:
    """The GM's hidden states for each sample of a batch: the NetRoller adapter's input.

    Read from the latent cache (or computed online); a sample without latents (a lag before its scene
    starts, a sample the harvest could not process) has present=False and is fully masked.
    """

    hidden: Tensor  # [B, L, T, H_gm] float32
    length: Tensor  # [B] long: valid positions
    present: Tensor  # [B] bool

    def to(self, device: torch.device | str) -> LatentInputs:
        return LatentInputs(
            hidden=self.hidden.to(device), length=self.length.to(device), present=self.present.to(device)
        )


@dataclass
class Batch:
    """One training/eval batch: inputs, targets, which samples they are, and (NetRoller) GM latents."""

    inputs: VADInputs
    targets: VADTargets
    sample_tokens: list[str]
    latents: LatentInputs | None = None

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            inputs=self.inputs.to(device),
            targets=self.targets.to(device),
            sample_tokens=self.sample_tokens,
            latents=self.latents.to(device) if self.latents is not None else None,
        )
