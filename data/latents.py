"""GM latents for the SM's samples: from the cache (or the GM itself, online), with lag and shuffle.

Which sample's latents a sample gets is decided once, up front (`latent_sources`):
- `lag = N`: the latents of the keyframe N positions earlier in the same scene (the paper's GM/SM
  asynchrony; the authors use 3). Before the scene has N earlier keyframes there is none: the sample gets
  no latents, so the adapter sees only its nonsensical token.
- `shuffle`: every sample gets the latents of another sample of the same split (a fixed-seed
  permutation without fixed points): the control that shows whether the adapter uses the GM at all.
Samples the harvest could not process come back absent too, and are counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from netroller.data.index import Index, SampleRecord
from netroller.errors import ConfigError
from netroller.models.vad.batch import Batch, LatentInputs


class LatentSource(Protocol):
    """Returns the latents of samples by token; None or an unknown/failed token is absent."""

    def get(self, tokens: Sequence[str | None]) -> LatentInputs: ...


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation of range(n) without fixed points (n >= 2): Sattolo's algorithm, one n-cycle."""
    if n < 2:
        raise ConfigError(f"shuffled latents need at least 2 samples, got {n}")
    rng = np.random.default_rng(seed)
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: every element moves
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def latent_sources(
    index: Index, records: Sequence[SampleRecord], *, lag: int = 0, shuffle: bool = False, seed: int = 0
) -> list[str | None]:
    """For each record, the sample token whose latents it gets (None: no latents)."""
    if lag < 0:
        raise ConfigError(f"latent lag must be >= 0, got {lag}")
    tokens: list[str | None] = []
    for rec in records:
        src = index.scene_neighbour(rec.sample_token, -lag) if lag else rec
        tokens.append(src.sample_token if src is not None else None)
    if shuffle:
        perm = derangement(len(tokens), seed)
        tokens = [tokens[j] for j in perm]
    return tokens


@dataclass
class CachedLatents:
    """Latents read from a cache through its reader, keeping the chosen layers only."""

    reader: object  # netroller.storage.reader.CacheReader (picklable, for DataLoader workers)
    layer_positions: tuple[int, ...]  # positions in the cache's layer axis

    def get(self, tokens: Sequence[str | None]) -> LatentInputs:
        real = [t for t in tokens if t is not None]
        batch = self.reader.read(real) if real else None
        key = self.reader.key
        shape = (len(tokens), len(self.layer_positions), key.tokens, key.hidden_size)
        hidden = np.zeros(shape, dtype=np.float32)
        length = np.zeros(len(tokens), dtype=np.int64)
        present = np.zeros(len(tokens), dtype=bool)
        j = 0
        for i, t in enumerate(tokens):
            if t is None:
                continue
            if batch.present[j]:
                hidden[i] = batch.hidden[j][list(self.layer_positions)]
                length[i] = batch.length[j]
                present[i] = True
            j += 1
        return LatentInputs(
            hidden=torch.from_numpy(hidden),
            length=torch.from_numpy(length),
            present=torch.from_numpy(present),
        )


@dataclass
class OnlineLatents:
    """The GM run on the samples' camera images at every request (the authors' way, for comparison).

    Values are rounded through `dtype` so that they equal what a harvest with that dtype caches.
    """

    capturer: object  # netroller.models.gm.capture.LatentCapturer
    prompts: object  # netroller.models.gm.prompts.PromptSource
    index: Index
    dataroot: Path
    dtype: str = "float16"

    def get(self, tokens: Sequence[str | None]) -> LatentInputs:
        from netroller.stages.harvest import load_camera_images

        n_layers = len(self.capturer.layers)
        t_max = self.capturer.tokens
        hidden_size = self.capturer.gm.hidden_size
        hidden = torch.zeros(len(tokens), n_layers, t_max, hidden_size)
        length = torch.zeros(len(tokens), dtype=torch.long)
        present = torch.zeros(len(tokens), dtype=torch.bool)
        for i, t in enumerate(tokens):
            if t is None:
                continue
            images = load_camera_images(self.index[t], self.dataroot)
            got = self.capturer.capture(
                images, self.prompts.prompt_for(t), answer=self.prompts.answer_for(t), key=t
            )
            h = torch.from_numpy(got.hidden)
            if self.dtype != "float32":
                h = h.to(getattr(torch, self.dtype)).float()
            hidden[i], length[i], present[i] = h, got.length, True
        return LatentInputs(hidden=hidden, length=length, present=present)


class LatentDataset(Dataset):
    """Wraps a sample dataset: item i is (sample i, the token whose latents it gets)."""

    def __init__(self, base: Dataset, sources: Sequence[str | None]):
        if len(sources) != len(base):
            raise ConfigError(f"{len(sources)} latent sources for {len(base)} samples")
        self.base = base
        self.sources = list(sources)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i], self.sources[i]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


class LatentCollate:
    """Collates samples as usual and attaches their latents (read in the loader, batch by batch)."""

    def __init__(self, source: LatentSource, collate):
        self.source = source
        self.collate = collate

    def __call__(self, items: list) -> Batch:
        batch = self.collate([s for s, _ in items])
        batch.latents = self.source.get([t for _, t in items])
        return batch
