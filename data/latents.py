"""GM latents for the SM's samples: from the cache (or the GM itself, online), with lag and shuffle.

Which sample's latents a sample gets is decided once, up front (`latent_sources`):
- `lag = N`: the latents of the keyframe N positions earlier in the same scene (the paper's GM/SM
  asynchrony; the authors use 3). Before the scene has N earlier keyframes there is none: the sample gets
  no latents, so the adapter sees only its nonsensical token.
- `shuffle`: every sample gets the latents of another sample of the same split (a fixed-seed
  permutation without fixed points): the control that shows whether the adapter uses the GM at all.
Samples the harvest could not process come back absent too, and are counted.

A cache may hold several questions per sample (`harvest --questions`), one row each. Which one a sample
reads is `QuestionDraw`'s choice: in training a fresh draw per sample and epoch from a seed, as the authors
re-draw a DriveLM question every time a sample is loaded (a category at random, then a question of it); in
eval always question 0 (the one `--questions one` asks).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from netroller.data.index import Index, SampleRecord
from netroller.errors import ConfigError
from netroller.models.gm.prompts import TEMPLATE_CATEGORY
from netroller.models.vad.batch import Batch, LatentInputs


class LatentSource(Protocol):
    """Returns the latents of samples by token, each asked one of its questions; None or an unknown/failed
    token is absent."""

    def get(self, tokens: Sequence[str | None], questions: Sequence[int]) -> LatentInputs: ...

    def categories(self, token: str) -> tuple[str, ...]:
        """The DriveLM category of each question the sample can be asked, question 0 first."""
        ...

    def annotated(self, token: str) -> bool:
        """The sample has latents made from its own DriveLM questions (not the template's)."""
        ...


@dataclass(frozen=True)
class QuestionDraw:
    """Which of a sample's questions it reads: "first" (question 0, eval), or "epoch": per sample and epoch a
    category drawn uniformly from the sample's, then a question of that category (the authors' draw)."""

    mode: str = "first"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("first", "epoch"):
            raise ConfigError(f"question draw must be 'first' or 'epoch', got {self.mode!r}")

    def choose(self, token: str, categories: Sequence[str], epoch: int) -> int:
        if self.mode == "first" or len(categories) < 2:
            return 0
        digest = int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "little")
        rng = np.random.default_rng([self.seed, epoch, digest])
        kinds = list(dict.fromkeys(categories))
        kind = kinds[int(rng.integers(len(kinds)))]
        rows = [q for q, c in enumerate(categories) if c == kind]
        return rows[int(rng.integers(len(rows)))]


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


LAG_POLICIES = ("exact", "annotated")


def latent_sources(
    index: Index,
    records: Sequence[SampleRecord],
    *,
    lag: int = 0,
    shuffle: bool = False,
    seed: int = 0,
    policy: str = "exact",
    annotated: Callable[[str], bool] | None = None,
) -> list[str | None]:
    """For each record, the sample token whose latents it gets (None: no latents).

    `policy="exact"`: the keyframe exactly `lag` earlier in the same scene. `policy="annotated"` (the
    authors' `latency_offset` with `text_latest_frame`): the latest keyframe at least `lag` earlier in the
    same scene for which `annotated(token)` holds (a DriveLM-annotated frame); none before it."""
    if lag < 0:
        raise ConfigError(f"latent lag must be >= 0, got {lag}")
    if policy not in LAG_POLICIES:
        raise ConfigError(f"lag policy must be one of {', '.join(LAG_POLICIES)}, got {policy!r}")
    if policy == "annotated" and annotated is None:
        raise ConfigError("the 'annotated' lag policy needs to know which frames are annotated")
    tokens: list[str | None] = []
    for rec in records:
        src = index.scene_neighbour(rec.sample_token, -lag) if lag else rec
        if policy == "annotated":
            k = lag
            while src is not None and not annotated(src.sample_token):
                k += 1
                src = index.scene_neighbour(rec.sample_token, -k)
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

    def get(self, tokens: Sequence[str | None], questions: Sequence[int]) -> LatentInputs:
        real = [(t, q) for t, q in zip(tokens, questions, strict=True) if t is not None]
        batch = self.reader.read([t for t, _ in real], [q for _, q in real]) if real else None
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

    def categories(self, token: str) -> tuple[str, ...]:
        return self.reader.categories(token)

    def annotated(self, token: str) -> bool:
        return token in self.reader and self.reader.categories(token) not in ((), (TEMPLATE_CATEGORY,))


@dataclass
class OnlineLatents:
    """The GM run on the samples' camera images at every request (the authors' way, for comparison).

    Values are rounded through `dtype` so that they equal what a harvest with that dtype caches.
    """

    capturer: object  # netroller.models.gm.capture.LatentCapturer
    prompts: object  # netroller.models.gm.prompts.PromptSource
    questions: str  # as `harvest --questions`
    index: Index
    dataroot: Path
    dtype: str = "float16"

    def _items(self, token: str) -> tuple:
        return self.prompts.select(token, self.questions, answered=self.capturer.latents == "teacher-forced")

    def categories(self, token: str) -> tuple[str, ...]:
        return tuple(item.category for item in self._items(token))

    def annotated(self, token: str) -> bool:
        return bool(self.prompts.items_for(token))

    def get(self, tokens: Sequence[str | None], questions: Sequence[int]) -> LatentInputs:
        from netroller.data.cameras import load_camera_images
        from netroller.models.gm.capture import Query

        n_layers = len(self.capturer.layers)
        t_max = self.capturer.tokens
        hidden_size = self.capturer.gm.hidden_size
        hidden = torch.zeros(len(tokens), n_layers, t_max, hidden_size)
        length = torch.zeros(len(tokens), dtype=torch.long)
        present = torch.zeros(len(tokens), dtype=torch.bool)
        for i, (t, q) in enumerate(zip(tokens, questions, strict=True)):
            items = self._items(t) if t is not None else ()
            if not 0 <= q < len(items):  # no sample, or nothing to ask it (no answer to teacher-force)
                continue
            images = load_camera_images(self.index[t], self.dataroot)
            got = self.capturer.capture_batch([Query(images, items[q].question, items[q].answer, t)])[0]
            h = torch.from_numpy(got.hidden)
            if self.dtype != "float32":
                h = h.to(getattr(torch, self.dtype)).float()
            hidden[i], length[i], present[i] = h, got.length, True
        return LatentInputs(hidden=hidden, length=length, present=present)


class LatentDataset(Dataset):
    """Wraps a sample dataset: item i is (sample i, the token whose latents it gets, which question of it)."""

    def __init__(
        self, base: Dataset, sources: Sequence[str | None], source: LatentSource, draw: QuestionDraw
    ):
        if len(sources) != len(base):
            raise ConfigError(f"{len(sources)} latent sources for {len(base)} samples")
        self.base = base
        self.sources = list(sources)
        self.draw = draw
        self._categories = {t: source.categories(t) for t in self.sources if t is not None}
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        token = self.sources[i]
        question = 0 if token is None else self.draw.choose(token, self._categories[token], self.epoch)
        return self.base[i], token, question

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


class LatentCollate:
    """Collates samples as usual and attaches their latents (read in the loader, batch by batch)."""

    def __init__(self, source: LatentSource, collate):
        self.source = source
        self.collate = collate

    def __call__(self, items: list) -> Batch:
        batch = self.collate([s for s, _, _ in items])
        batch.latents = self.source.get([t for _, t, _ in items], [q for _, _, q in items])
        return batch
