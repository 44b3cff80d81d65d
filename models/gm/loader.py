"""Load a general model and fingerprint it for the cache key. Two backends (`GMBackend`):
- "hf": any Hugging Face image-text-to-text VLM, a local folder or a hub id (hub only where the machine can
  reach it, or the id is in the local hub cache);
- "llama-adapter": LLaMA-Adapter V2 multimodal (the paper's GM) in its released files, a local folder laid out
  as `netroller.models.gm.llama_adapter.files` describes.
The backend is read from the folder (config.json: "hf"; params.json: "llama-adapter") or named in front of
it ("llama-adapter:DIR", "hf:ID").
The weights' hash and the processor's hash go into the cache key, so a cache built with other weights or
another tokenizer is never mistaken for this one. `inspect_gm` reads all the key needs from the config and
the files, so a harvest's driver never loads the weights (28 GB for a 7B model in float32); only the processes
that compute (`load_gm`) do, in bfloat16 on GPUs by default.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from netroller.errors import ConfigError, ModelError
from netroller.models.gm.tiny import STAND_IN_FILE

GMDtype = Literal["float32", "float16", "bfloat16"]
GMBackend = Literal["hf", "llama-adapter"]
GM_BACKENDS: tuple[str, ...] = get_args(GMBackend)

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


AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]


def default_compute_dtype(device: str) -> GMDtype:
    """bfloat16 on GPUs (how 7B GMs are run), float32 on CPUs (bfloat16 matmuls are slow there)."""
    return "bfloat16" if str(device).startswith("cuda") else "float32"


@dataclass(frozen=True, kw_only=True)
class GMInfo:
    """What the cache key needs to know about a GM, read from its config and files without its weights."""

    folder: Path
    """The local folder (a hub id resolves to its snapshot)."""
    name: str
    """The hub id, or the folder's name for a local path."""
    num_layers: int
    """Decoder layers of the text model."""
    hidden_size: int
    """Residual-stream width of the text model."""
    model_hash: str
    """sha256 over the weight files' names and bytes ("" when inspected with fingerprint=False)."""
    processor_hash: str
    """sha256 over the tokenizer / processor files' names and bytes ("" when fingerprint=False)."""
    is_random_stand_in: bool
    """True for the embedded tiny GMs (random weights): results must be labelled as such."""
    compute_dtype: GMDtype
    """The precision it computes in."""
    attn_implementation: AttnImplementation
    """Its attention kernel."""
    backend: GMBackend = "hf"
    """Which code runs it: "hf" (transformers) or "llama-adapter" (`netroller.models.gm.llama_adapter`)."""
    channel_order: str | None = None
    """"bgr" or "rgb": the channel order images are fed in (LLaMA-Adapter; None for Hugging Face processors,
    which take RGB)."""


@dataclass(frozen=True)
class LoadedGM:
    """A loaded GM, in eval mode with gradients off, and its `GMInfo`."""

    model: Any
    """The `AutoModelForImageTextToText` model, or a `LlamaAdapterV2`."""
    processor: Any
    """Its `AutoProcessor` (the tokenizer pads on the left, for decoder-only generation), or an
    `AdapterProcessor`."""
    info: GMInfo

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_layers(self) -> int:
        return self.info.num_layers

    @property
    def hidden_size(self) -> int:
        return self.info.hidden_size

    @property
    def is_random_stand_in(self) -> bool:
        return self.info.is_random_stand_in


def inspect_gm(
    model: str | Path,
    *,
    dtype: GMDtype = "float32",
    attn_implementation: AttnImplementation = "sdpa",
    fingerprint: bool = True,
    channel_order: str | None = None,
) -> GMInfo:
    """The GM's `GMInfo` from its config and files (the weights are hashed, never loaded); ModelError if
    missing or not an image-text-to-text model, ConfigError for an unknown dtype or attention kernel.
    `channel_order` ("bgr" | "rgb", LLaMA-Adapter only; None = its default, the authors' BGR)."""
    if dtype not in get_args(GMDtype):
        raise ConfigError(f"GM dtype must be one of {', '.join(get_args(GMDtype))}, got {dtype!r}")
    if attn_implementation not in get_args(AttnImplementation):
        raise ConfigError(
            f"attention implementation must be one of {', '.join(get_args(AttnImplementation))}, "
            f"got {attn_implementation!r}"
        )
    backend, target = split_backend(model)
    folder, name = _resolve(target, hub=backend != "llama-adapter")
    if backend is None:
        backend = "llama-adapter" if _looks_like_llama_adapter(folder) else "hf"
    if backend == "llama-adapter":
        from netroller.models.gm.llama_adapter.loading import inspect_llama_adapter

        return inspect_llama_adapter(
            folder,
            name=name,
            dtype=dtype,
            attn_implementation=attn_implementation,
            channel_order=channel_order,
            fingerprint=fingerprint,
        )
    if channel_order is not None:
        raise ConfigError(
            "the channel order applies to LLaMA-Adapter models only; Hugging Face processors take RGB images"
        )
    return _inspect_hf(folder, name, dtype, attn_implementation, fingerprint)


def split_backend(model: str | Path) -> tuple[GMBackend | None, str | Path]:
    """("llama-adapter", "DIR") for "llama-adapter:DIR", ("hf", "ID") for "hf:ID", (None, model) otherwise."""
    if isinstance(model, str):
        for backend in GM_BACKENDS:
            if model.startswith(f"{backend}:"):
                return backend, model[len(backend) + 1 :]  # type: ignore[return-value]  # one of GM_BACKENDS
    return None, model


def _looks_like_llama_adapter(folder: Path) -> bool:
    return not (folder / "config.json").is_file() and (folder / "params.json").is_file()


def _inspect_hf(
    folder: Path, name: str, dtype: GMDtype, attn_implementation: AttnImplementation, fingerprint: bool
) -> GMInfo:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(
            "attention implementation 'flash_attention_2' needs the flash-attn package (pip install flash-attn); "
            "use 'sdpa' without it"
        )
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
    return GMInfo(
        folder=folder,
        name=name,
        num_layers=int(text.num_hidden_layers),
        hidden_size=int(text.hidden_size),
        model_hash=weights_hash(folder) if fingerprint else "",
        processor_hash=processor_hash(folder) if fingerprint else "",
        is_random_stand_in=(folder / STAND_IN_FILE).is_file(),
        compute_dtype=dtype,
        attn_implementation=attn_implementation,
    )


def load_processor(info: GMInfo) -> Any:
    """The GM's `AutoProcessor` (tokenizer padding on the left), or a LLaMA-Adapter's `AdapterProcessor`;
    ModelError if its files cannot be read."""
    if info.backend == "llama-adapter":
        from netroller.models.gm.llama_adapter.loading import adapter_processor

        return adapter_processor(info.folder, info.channel_order)  # type: ignore[arg-type]  # set by inspect
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(info.folder)
    except Exception as err:  # missing or broken processor files
        raise ModelError(f"cannot load the processor from {info.folder}: {err}") from err
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"
    return processor


def load_gm(
    model: str | Path,
    *,
    device: str = "cpu",
    dtype: GMDtype | None = None,
    attn_implementation: AttnImplementation = "sdpa",
    fingerprint: bool = True,
    channel_order: str | None = None,
) -> LoadedGM:
    """Load `model` (folder or hub id, or "llama-adapter:DIR") onto `device`, computing in `dtype` (default:
    bfloat16 on CUDA, float32 on CPU) with `attn_implementation`; ModelError if missing or not a VLM.

    `fingerprint=False` skips hashing the files (reading every weight byte again: ~14 GB for a 7B model),
    for processes that only compute, such as harvest actors whose cache key the driver already built.
    """
    import torch

    info = inspect_gm(
        model,
        dtype=dtype or default_compute_dtype(device),
        attn_implementation=attn_implementation,
        fingerprint=fingerprint,
        channel_order=channel_order,
    )
    if info.backend == "llama-adapter":
        from netroller.models.gm.llama_adapter.loading import load_llama_adapter

        model = load_llama_adapter(
            info.folder,
            dtype=getattr(torch, info.compute_dtype),
            device=device,
            kernel=info.attn_implementation,  # type: ignore[arg-type]  # checked by inspect
        )
        return LoadedGM(model=model, processor=load_processor(info), info=info)
    from transformers import AutoModelForImageTextToText

    try:
        loaded = AutoModelForImageTextToText.from_pretrained(
            info.folder,
            dtype=getattr(torch, info.compute_dtype),
            attn_implementation=info.attn_implementation,
        )
    except Exception as err:  # missing weight files, incompatible shapes, an unsupported kernel
        raise ModelError(f"cannot load the model from {info.folder}: {err}") from err
    processor = load_processor(info)
    loaded = loaded.to(device).eval()
    loaded.requires_grad_(False)
    return LoadedGM(model=loaded, processor=processor, info=info)


def weights_hash(folder: Path) -> str:
    """sha256 over the names and bytes of the folder's safetensors files (or .bin files if none)."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise ModelError(f"model folder {folder} has no *.safetensors or *.bin weight files")
    return hash_files(files)


def processor_hash(folder: Path) -> str:
    """sha256 over the names and bytes of the tokenizer and processor files present in the folder."""
    files = [folder / n for n in _PROCESSOR_FILES if (folder / n).is_file()]
    if not files:
        raise ModelError(f"model folder {folder} has no tokenizer or processor files")
    return hash_files(files)


def hash_files(files: list[Path]) -> str:
    """sha256 over the files' names and bytes, in order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:  # streamed: a 7B checkpoint is ~14 GB
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _resolve(model: str | Path, *, hub: bool = True) -> tuple[Path, str]:
    """A local folder for `model` and the name to report: the folder itself, or a hub snapshot (`hub`)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model path {path} is a file; expected a model folder")
        return path.resolve(), path.resolve().name
    if not hub:
        raise ModelError(f"model path {path} does not exist")
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
