"""Inspect (for the cache key, no weights read) and load (in the dtype asked) a LLaMA-Adapter V2 folder."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from netroller.errors import ConfigError, ModelError
from netroller.models.gm.llama_adapter.files import (
    AdapterFiles,
    ModelShapes,
    adapter_state,
    clip_params,
    clip_state,
    llama_state,
    read_shapes,
)
from netroller.models.gm.llama_adapter.llama import AttentionKernel
from netroller.models.gm.llama_adapter.model import LlamaAdapterV2
from netroller.models.gm.llama_adapter.processor import (
    DEFAULT_CHANNEL_ORDER,
    AdapterProcessor,
    ChannelOrder,
    ImageTransform,
    Tokenizer,
)

# The authors resize every camera to 224 x 224 whatever the CLIP file (their transform's fixed size).
IMAGE_SIZE = 224
KERNELS: tuple[str, ...] = ("sdpa", "eager")
# Tensors the authors' model starts at zero and an adapter checkpoint may leave out: bias tuning's biases and
# the gates of blocks that read no adapter queries.
_ZERO_DEFAULT = re.compile(
    r"llama\.layers\.\d+\.(attention\.(wq|wo)\.bias|feed_forward\.w[123]\.bias|attention\.gate)"
)


def inspect_llama_adapter(
    folder: Path,
    *,
    name: str,
    dtype: str,
    attn_implementation: str,
    channel_order: str | None,
    fingerprint: bool,
):
    """The folder's `GMInfo` from params.json, the tokenizer and the checkpoints' shapes (memory-mapped, no
    tensor read); the model hash covers params.json, the LLaMA shards, the adapter and the CLIP file, the
    processor hash the tokenizer."""
    from netroller.models.gm.loader import GMInfo, hash_files
    from netroller.models.gm.tiny import STAND_IN_FILE

    if attn_implementation not in KERNELS:
        raise ConfigError(
            f"attention implementation {attn_implementation!r} is not available for LLaMA-Adapter models "
            f"(use one of {', '.join(KERNELS)})"
        )
    # The transform checks the order ("bgr" | "rgb"); the key records it through its settings (prompt hash).
    order = ImageTransform(
        size=IMAGE_SIZE, channel_order=channel_order or DEFAULT_CHANNEL_ORDER
    ).channel_order
    files = AdapterFiles.find(folder)
    shapes = read_shapes(files, Tokenizer(files.tokenizer).vocab_size)
    return GMInfo(
        folder=files.folder,
        name=name,
        num_layers=shapes.llama.n_layers,
        hidden_size=shapes.llama.dim,
        model_hash=hash_files(files.weight_files) if fingerprint else "",
        processor_hash=hash_files([files.tokenizer]) if fingerprint else "",
        is_random_stand_in=(files.folder / STAND_IN_FILE).is_file(),
        compute_dtype=dtype,  # type: ignore[arg-type]  # checked by inspect_gm
        attn_implementation=attn_implementation,  # type: ignore[arg-type]
        backend="llama-adapter",
        channel_order=order,
    )


def adapter_processor(folder: Path, channel_order: ChannelOrder) -> AdapterProcessor:
    """The tokenizer and the authors' image transform (no weights read)."""
    files = AdapterFiles.find(folder)
    return AdapterProcessor(
        Tokenizer(files.tokenizer), ImageTransform(size=IMAGE_SIZE, channel_order=channel_order)
    )


def load_llama_adapter(
    folder: Path, *, dtype: torch.dtype, device: str, kernel: AttentionKernel
) -> LlamaAdapterV2:
    """The model from the folder's files, in `dtype` on `device`, eval mode, gradients off."""
    files = AdapterFiles.find(folder)
    shapes = read_shapes(files, Tokenizer(files.tokenizer).vocab_size)
    clip = clip_state(files)
    cparams = clip_params(clip, files.clip)
    if cparams.image_size != IMAGE_SIZE:
        raise ModelError(
            f"{files.clip}: a CLIP tower for {cparams.image_size} px images; LLaMA-Adapter V2 feeds {IMAGE_SIZE} px"
        )
    with torch.device("meta"):
        model = LlamaAdapterV2(shapes.llama, cparams, shapes.visual, kernel=kernel)
    state = _state_dict(files, shapes, clip, model.state_dict())
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


def _state_dict(
    files: AdapterFiles, shapes: ModelShapes, clip: dict, expected: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Every tensor of the model, from the files in the authors' order (CLIP, LLaMA, then the adapter
    checkpoint over both), checked by name and shape; ModelError naming the file."""
    state: dict[str, torch.Tensor] = {}
    source: dict[str, Path] = {}

    def put(key: str, value: torch.Tensor, path: Path) -> None:
        if key not in expected:
            raise ModelError(f"{path}: unexpected tensor {key!r} for a LLaMA-Adapter V2 model")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ModelError(
                f"{path}: tensor {key!r} has shape {list(value.shape)}, the model (sized by "
                f"{files.params.name} and the checkpoints) needs {list(expected[key].shape)}"
            )
        state[key], source[key] = value, path

    for key, meta in expected.items():
        if _ZERO_DEFAULT.fullmatch(key):
            state[key] = torch.zeros(meta.shape)
    for key, value in clip.items():
        put(f"clip.{key}", value, files.clip)
    for key, value in llama_state(files).items():
        put(f"llama.{key}", value, files.shards[0])
    for key, value in adapter_state(files).items():
        if key.startswith("clip.visual."):
            put("clip." + key[len("clip.visual.") :], value, files.adapter)
        elif not key.startswith("clip."):  # the rest of CLIP (its text tower) is not part of the model
            put(key, value, files.adapter)
    adapted = range(shapes.llama.n_layers - shapes.visual.query_layers, shapes.llama.n_layers)
    for layer in adapted:
        key = f"llama.layers.{layer}.attention.gate"
        if source.get(key) != files.adapter:
            raise ModelError(f"{files.adapter}: no {key!r} (the gate of a layer that reads adapter queries)")
    missing = sorted(set(expected) - set(state))
    if missing:
        owner = files.clip if missing[0].startswith("clip.") else files.shards[0]
        if not missing[0].startswith(("clip.", "llama.")):
            owner = files.adapter
        raise ModelError(f"{owner}: tensor {missing[0]!r} is missing")
    return state
