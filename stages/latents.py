"""Where a NetRoller run's latents come from and which latents each sample reads: one builder for training,
resume and eval.

    setup = open_cache(cache, layers="all", skip_damaged=False)          # or open_online(...) for the GM itself
    feed = feed_latents(setup, dataset, index, lag=3, shuffle=False, draw=QuestionDraw("epoch", seed=0))
    loader = DataLoader(feed.dataset, collate_fn=feed.collate, ...)

`open_cache` opens a harvest's cache (checked against the key a run recorded, when there is one: strict, but
for the authors' teacher-forced-then-generated pairing in eval), `open_online` loads the GM to run it in the
loop with the key a harvest with the same settings would record; both resolve the GM layers the adapter is
fed. `feed_latents` wires a sample dataset to them: the lag, the shuffled control, and which question of a
sample is read (`QuestionDraw`), and counts the samples left without latents and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from netroller.data.dataset import collate
from netroller.data.index import CAMERAS, Index, read_index
from netroller.data.latents import (
    CachedLatents,
    LatentCollate,
    LatentDataset,
    LatentSource,
    OnlineLatents,
    QuestionDraw,
    latent_sources,
)
from netroller.errors import ConfigError
from netroller.storage.schema import LatentKey


@dataclass(frozen=True)
class LatentSetup:
    """The latent side of a run: where latents come from, their key, and which layers the adapter sees."""

    source: LatentSource
    key: LatentKey
    """The latents' key, with the layers the adapter is fed."""
    cache_layers: tuple[int, ...]
    """The layers the source holds."""
    layer_positions: tuple[int, ...]
    """Positions of the fed layers in the source's layer axis."""
    hidden_size: int
    damaged: frozenset[str] = frozenset()
    """Samples left out under skip_damaged."""
    pairing: str | None = None
    """The allowed key difference the source was accepted with (`LatentKey.check`), if any."""


def used_layers(
    spec: str | Sequence[int], available: tuple[int, ...], num_model_layers: int
) -> tuple[int, ...]:
    """The GM layers the adapter is fed ("all", "-1", "0,15,31" or indices), all among `available`."""
    from netroller.models.gm.capture import resolve_layers

    used = resolve_layers(spec, num_model_layers)
    missing = [layer for layer in used if layer not in available]
    if missing:
        raise ConfigError(
            f"--layers-used {spec!r} asks for GM layers {missing} that the latents do not hold "
            f"(they hold {list(available)})"
        )
    return used


def open_cache(
    cache: Path,
    *,
    layers: str | Sequence[int],
    skip_damaged: bool,
    expect: LatentKey | None = None,
    evaluating: bool = False,
) -> LatentSetup:
    """The latents of a harvest's cache, the adapter fed `layers` of them. With `expect` (the key a run
    recorded) the cache must hold those latents (`LatentKey.check`; `evaluating` allows the authors'
    pairing); `skip_damaged` checks every sample first and serves the damaged ones as absent."""
    from netroller.storage.reader import CacheReader

    reader = CacheReader(cache)
    key = reader.key
    pairing = None
    if expect is not None:
        pairing = expect.check(key.latent_key(), where=f"cache {reader.root}", evaluating=evaluating)
    used = used_layers(layers, key.layers, key.num_model_layers)
    positions = tuple(key.layers.index(layer) for layer in used)
    damaged = frozenset(reader.damaged_samples()) if skip_damaged else frozenset()
    reader.leave_out(damaged)
    return LatentSetup(
        CachedLatents(reader, positions),
        key.latent_key(used),
        key.layers,
        positions,
        key.hidden_size,
        damaged,
        pairing,
    )


def open_online(
    *,
    model: str | None,
    layers: str,
    layers_used: str,
    tokens: int,
    prompt: str | None,
    drivelm: Path | None,
    dtype: str,
    prompt_format: str,
    latents: str,
    questions: str,
    index_path: Path,
    dataroot: Path | None = None,
) -> LatentSetup:
    """The GM itself (None: the embedded tiny GM) run on CPU in the loop, capturing `layers` and feeding
    `layers_used`, keyed as a harvest with these settings would key its cache (the GM by its name, not the
    path as typed), so that a run trained online is evaluated with a cache of the same GM."""
    from netroller.models.gm.capture import CaptureSpec, Decoding, resolve_layers
    from netroller.models.gm.loader import default_compute_dtype, inspect_gm
    from netroller.models.gm.prompts import PromptSource, prompt_hash
    from netroller.models.gm.tiny import build_tiny_gm, default_tiny_gm_path

    model = model or str(build_tiny_gm(default_tiny_gm_path()))
    info = inspect_gm(model, fingerprint=False)
    captured = resolve_layers(layers, info.num_layers)
    used = used_layers(layers_used, captured, info.num_layers)
    prompts = PromptSource.drivelm(drivelm, fallback=prompt) if drivelm else PromptSource.template(prompt)
    spec = CaptureSpec(
        model=model,
        device="cpu",
        compute_dtype=default_compute_dtype("cpu"),
        attn_implementation="sdpa",
        layers=used,
        tokens=tokens,
        cameras=CAMERAS,
        latents=latents,  # type: ignore[arg-type]  # checked by the capturer
        decoding=Decoding(),
        prompt_format=prompt_format,  # type: ignore[arg-type]  # checked by the capturer
    )
    capturer = spec.capturer(fingerprint=True)
    index = read_index(index_path)
    source = OnlineLatents(capturer, prompts, questions, index, index.dataroot(dataroot), dtype=dtype)
    key = LatentKey.of_gm(
        capturer.gm.info,
        prompt_hash=prompt_hash(prompts, capturer.gm.processor, fmt=prompt_format, cameras=CAMERAS),
        tokens=tokens,
        dtype=dtype,
        layers=used,
        latents=latents,
        decode=capturer.decode,
        questions=questions,
    )
    return LatentSetup(source, key, captured, tuple(range(len(used))), info.hidden_size)


@dataclass(frozen=True)
class LatentFeed:
    """A sample dataset wired to its latents, and how many samples have none, and why."""

    dataset: LatentDataset
    collate: LatentCollate
    counts: dict[str, int] = field(default_factory=dict)
    """samples, samples_without_latents = no_earlier_frame_for_lag + failed_in_harvest + damaged_left_out."""


def feed_latents(
    setup: LatentSetup,
    base,
    index: Index,
    *,
    lag: int = 0,
    shuffle: bool = False,
    shuffle_seed: int = 0,
    lag_policy: str = "exact",
    draw: QuestionDraw = QuestionDraw(),
) -> LatentFeed:
    """`base` (a `SampleDataset`) with each sample's latents from `setup`: those of the keyframe `lag`
    earlier in its scene (`lag_policy="annotated"`: the latest DriveLM-annotated one at least `lag`
    earlier), or another sample's (`shuffle`, the control), asked the question `draw` picks. The annotated
    policy on latents without a single DriveLM-annotated frame (harvested without --drivelm) is refused: it
    would leave every sample without latents."""
    if lag_policy == "annotated" and not any(setup.source.annotated(r.sample_token) for r in index.records):
        raise ConfigError(
            "--lag-policy annotated: none of the latents' frames is DriveLM-annotated (the harvest asked the "
            "template question, not a --drivelm file's), so every sample would be left without latents; "
            "harvest with --drivelm or use --lag-policy exact"
        )
    sources = latent_sources(
        index,
        base.records,
        lag=lag,
        shuffle=shuffle,
        seed=shuffle_seed,
        policy=lag_policy,
        annotated=setup.source.annotated,
    )
    without = sum(t is None for t in sources)
    reader = getattr(setup.source, "reader", None)
    damaged = sum(t is not None and t in setup.damaged for t in sources)
    failed = (
        sum(t is not None and t not in reader and t not in setup.damaged for t in sources)
        if reader is not None
        else 0
    )
    counts = {
        "samples": len(base),
        "samples_without_latents": without + failed + damaged,
        "no_earlier_frame_for_lag": without,
        "failed_in_harvest": failed,
        "damaged_left_out": damaged,
    }
    dataset = LatentDataset(base, sources, setup.source, draw)
    return LatentFeed(dataset, LatentCollate(setup.source, collate), counts)
