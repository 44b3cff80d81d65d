"""VAD's batch types: inputs from sensor data only, targets from annotations only (navsim's rule), so ground
truth cannot leak into the model: the detector's forwards take `VADInputs` pieces and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from netroller.models.vad.detector import CameraFrame
from netroller.models.vad.targets import VADTargets


@dataclass
class VADInputs:
    """What the car knows at the sample's time: its cameras now and (training) at a few earlier frames."""

    frame: CameraFrame  # the sample's frame
    history: list[CameraFrame]  # earlier frames of the training queue, oldest first; [] at test
    scene_tokens: list[str]  # per sample: test-time inference carries the BEV through each scene
    command: Tensor  # [B] long: 0 right, 1 left, 2 straight; selects the plan mode

    def to(self, device: torch.device | str) -> VADInputs:
        return VADInputs(
            frame=self.frame.to(device),
            history=[f.to(device) for f in self.history],
            scene_tokens=self.scene_tokens,
            command=self.command.to(device),
        )

    @property
    def batch_size(self) -> int:
        return int(self.frame.images.shape[0])


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
    latents: LatentInputs | None = field(default=None)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            inputs=self.inputs.to(device),
            targets=self.targets.to(device),
            sample_tokens=self.sample_tokens,
            latents=self.latents.to(device) if self.latents is not None else None,
        )
