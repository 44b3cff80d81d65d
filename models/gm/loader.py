"""Load a general model (any Hugging Face image-text-to-text VLM) and fingerprint it for the cache key.

A local folder or a hub id (hub only where the machine can reach it, or the id is in the local hub cache).
The weights' hash and the processor's hash go into the cache key, so a cache built with other weights or
another tokenizer is never mistaken for this one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from netroller.errors import ConfigError, ModelError
from netroller.models.gm.tiny import STAND_IN_FILE

GMDtype = Literal["float32", "float16", "bfloat16"]

# Files that define how text and images become model inputs; their bytes make the processor hash.
_PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "chat_template.json",
    "chat_template.jinja",
)
_HASH_CHUNK = 8 << 20


@dataclass(frozen=True)
class LoadedGM:
    """A loaded GM, in eval mode with gradients off, and what the cache key needs to know about it."""

    model: Any
    """The `AutoModelForImageTextToText` model."""
    processor: Any
    """Its `AutoProcessor`; the tokenizer pads on the left (decoder-only generation)."""
    name: str
    """The hub id, or the folder's name for a local path."""
    num_layers: int
    """Decoder layers of the text model."""
    hidden_size: int
    """Residual-stream width of the text model."""
    model_hash: str
    """sha256 over the weight files' names and bytes ("" when loaded with fingerprint=False)."""
    processor_hash: str
    """sha256 over the tokenizer / processor files' names and bytes ("" when loaded with fingerprint=False)."""
    is_random_stand_in: bool
    """True for the embedded tiny GM (random weights): results must be labelled as such."""


def load_gm(
    model: str | Path, *, device: str = "cpu", dtype: GMDtype = "float32", fingerprint: bool = True
) -> LoadedGM:
    """Load `model` (folder or hub id) onto `device` in `dtype`; ModelError if missing or not a VLM.

    `fingerprint=False` skips hashing the files (reading every weight byte again: ~14 GB for a 7B model),
    for processes that only compute, such as harvest actors whose cache key the driver already built.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    if dtype not in get_args(GMDtype):
        raise ConfigError(f"dtype must be one of {get_args(GMDtype)}, got {dtype!r}")
    folder, name = _resolve(model)
    if not (folder / "config.json").is_file():
        raise ModelError(f"model folder {folder} has no config.json: not a Hugging Face checkpoint")
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as err:  # transformers raises ValueError/KeyError/OSError for unknown or broken configs
        raise ModelError(f"cannot read the model config in {folder}: {err}") from err
    if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        raise ModelError(
            f"model {folder} is a {config.model_type!r} model, not an image-text-to-text model "
            "(AutoModelForImageTextToText cannot load it)"
        )
    text = config.get_text_config()
    try:
        loaded = AutoModelForImageTextToText.from_pretrained(folder, dtype=getattr(torch, dtype))
        processor = AutoProcessor.from_pretrained(folder)
    except Exception as err:  # missing weight files, incompatible shapes, missing processor files
        raise ModelError(f"cannot load the model or processor from {folder}: {err}") from err
    loaded = loaded.to(device).eval()
    loaded.requires_grad_(False)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"
    return LoadedGM(
        model=loaded,
        processor=processor,
        name=name,
        num_layers=int(text.num_hidden_layers),
        hidden_size=int(text.hidden_size),
        model_hash=weights_hash(folder) if fingerprint else "",
        processor_hash=processor_hash(folder) if fingerprint else "",
        is_random_stand_in=(folder / STAND_IN_FILE).is_file(),
    )


def weights_hash(folder: Path) -> str:
    """sha256 over the names and bytes of the folder's safetensors files (or .bin files if none)."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise ModelError(f"model folder {folder} has no *.safetensors or *.bin weight files")
    return _hash_files(files)


def processor_hash(folder: Path) -> str:
    """sha256 over the names and bytes of the tokenizer and processor files present in the folder."""
    files = [folder / n for n in _PROCESSOR_FILES if (folder / n).is_file()]
    if not files:
        raise ModelError(f"model folder {folder} has no tokenizer or processor files")
    return _hash_files(files)


def _hash_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:  # streamed: a 7B checkpoint is ~14 GB
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _resolve(model: str | Path) -> tuple[Path, str]:
    """A local folder for `model` and the name to report: the folder itself, or a hub snapshot."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model path {path} is a file; expected a save_pretrained folder")
        return path.resolve(), path.resolve().name
    text = str(model)
    looks_like_hub_id = (
        isinstance(model, str) and text.count("/") == 1 and not text.startswith((".", "/", "~"))
    )
    if not looks_like_hub_id:
        raise ModelError(f"model path {path} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text)), text
    except Exception as err:  # offline, unknown repo, gated repo: all one answer for the user
        raise ModelError(
            f"model {text!r} is not a local folder and could not be fetched from the hub: {err}"
        ) from err
