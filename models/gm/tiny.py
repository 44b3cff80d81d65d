"""The embedded tiny GM: a random-weight LLaVA-architecture model built locally, nothing downloaded.

It stands in for the paper's LLaMA-2-7B + CLIP GM so that `harvest`, the cache and training run end to end
on a laptop. Architecture: a CLIP vision tower (224 px, 32 px patches -> 49 image tokens per camera) and a
LLaMA text model (4 layers, hidden 128), joined by LLaVA's projector; a byte-level BPE tokenizer trained
here on the small driving corpus below; `CLIPImageProcessorPil` (resize to 224 x 224 without a crop, so the
whole camera field of view is kept) and `LlavaProcessor`. No chat template by default: the GM is prompted
Alpaca-style, as LLaMA-Adapter is (see `netroller.models.gm.prompts`); `TinyGMSpec(chat_template=True)` adds
a small LLaVA-style one (USER/ASSISTANT turns, an image part rendered as the image token) to test chat prompts.
`arch="qwen2-vl"` builds the second architecture instead, a tiny Qwen2-VL (`netroller.models.gm.tiny_qwen`);
`arch="llama-adapter"` a tiny LLaMA-Adapter V2 in its released file formats, not a Hugging Face folder
(`netroller.models.gm.llama_adapter.tiny`).

Everything is written with `save_pretrained` and read back with `AutoModelForImageTextToText` /
`AutoProcessor`, the same path as a real checkpoint. `netroller_stand_in.json` beside the weights marks the
folder as a random-weight stand-in; `load_gm` reports it and every printed result should say so.

Random weights are made to behave a little like a language model on purpose:
- the text model is initialised with std 0.2 (not 0.02), so greedy decoding wanders over the vocabulary
  and depends on the images and the question, instead of repeating one token forever;
- the EOS row of the LM head is scaled by 2, so greedy decoding emits EOS after a few tokens on some
  inputs and not on others, which exercises early stopping.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import torch

from netroller.errors import ConfigError, ModelError
from netroller.storage.atomic import atomic_path

if TYPE_CHECKING:
    from netroller.models.gm.llama_adapter.tiny import TinyAdapterSpec
    from netroller.models.gm.tiny_qwen import TinyQwenSpec

TinyArch = Literal["llava", "qwen2-vl", "llama-adapter"]
HF_ARCHS: tuple[str, ...] = ("llava", "qwen2-vl")  # the archs built as save_pretrained folders

# Bump when the architecture, the corpus or the weight recipe changes: old folders are rebuilt.
BUILDER_VERSION = 1
STAND_IN_FILE = "netroller_stand_in.json"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")  # ids 0..4, in this order
_UNK_ID, _BOS_ID, _EOS_ID, _PAD_ID, _IMAGE_ID = range(len(SPECIAL_TOKENS))

# The tokenizer's training text: driving-scene sentences in the style of DriveLM questions and answers.
_CORPUS = """
Below is an instruction that describes a task. Write a response that appropriately completes the request.
What are the important objects in the current scene? Those objects will be considered for the future reasoning and driving decision.
What should the ego vehicle do next? Based on the observations, what actions may the ego vehicle take?
The ego vehicle is driving straight on a two lane road in light traffic.
A pedestrian is crossing the street at the zebra crossing ahead, so the ego vehicle should slow down and yield.
The car in front of the ego vehicle is braking; keep a safe distance and decelerate gently.
Turn left at the next intersection after the oncoming truck has passed.
Turn right into the side road; check the cyclist on the right side before turning.
A bus is stopped at the bus stop on the right lane, change to the left lane to overtake it.
The traffic light ahead is red, stop behind the white line and wait until it turns green.
The traffic light is green, keep going straight at the current speed.
There is a construction zone with traffic cones and barriers on the left side of the road.
A motorcycle is approaching from behind in the adjacent lane; do not change lanes now.
The road curves to the left; follow the lane divider and keep in the centre of the lane.
A parked trailer blocks part of the lane, steer slightly to the left to pass it.
Is there any vehicle in the front left camera? Yes, a white sedan is moving in the same direction.
What is the status of the pedestrian in the back camera? The pedestrian is standing on the sidewalk.
Predict the behavior of the ego vehicle. The ego vehicle is going straight and accelerating slowly.
What is the probability that the truck will collide with the ego vehicle? It is low, the truck is stopping.
In this scenario, what are safe actions to take for the ego vehicle? Brake gently, keep the lane, go ahead.
What are the objects to the front right of the ego car? There is a barrier, a traffic cone and a bicycle.
Would the ego vehicle stop at the crossing? Yes, because people are walking across the road.
The driving command is go straight; the planned trajectory follows the lane for the next three seconds.
The driving command is turn left; the planned trajectory bends to the left within the drivable area.
The driving command is turn right; the planned trajectory bends to the right and stays on the road.
Vehicles on the opposite lane are moving towards the ego vehicle at moderate speed.
The bicycle in front is moving slowly near the road boundary, overtake it with enough lateral space.
It is night and the road is wet, reduce the speed and increase the following distance.
CAM_FRONT CAM_FRONT_RIGHT CAM_FRONT_LEFT CAM_BACK CAM_BACK_LEFT CAM_BACK_RIGHT
car truck construction vehicle bus trailer barrier motorcycle bicycle pedestrian traffic cone
divider ped crossing boundary lane drivable area road segment intersection stop line walkway
left right front back ahead behind near far fast slow stop go accelerate decelerate keep change lane
zero one two three four five six seven eight nine ten meters seconds speed distance angle
"""


def corpus_lines() -> list[str]:
    """The tokenizers' training text, one sentence a line."""
    return [line for line in _CORPUS.splitlines() if line.strip()]


@dataclass(frozen=True, kw_only=True)
class TinyGMSpec:
    """Architecture of the tiny GM; the defaults are what `build_tiny_gm` builds."""

    text_layers: int = 4
    """Decoder layers of the LLaMA text model (the GM layers a harvest captures)."""
    text_hidden: int = 128
    """Residual-stream width H of the text model (the width of every captured latent)."""
    text_heads: int = 4
    """Attention heads of the text model; must divide `text_hidden`."""
    text_kv_heads: int = 2
    """Key/value heads (grouped-query attention, as LLaMA-2-70B and later); must divide `text_heads`."""
    text_init_std: float = 0.2
    """Init std of the text model; large so that greedy decoding depends on its input (see module doc)."""
    eos_logit_scale: float = 2.0
    """Factor on the LM head's EOS row, so that decoding stops early on some inputs."""
    vision_hidden: int = 64
    """Width of the CLIP vision tower."""
    vision_layers: int = 2
    """Transformer layers of the CLIP vision tower."""
    image_size: int = 224
    """Input side of the vision tower in pixels (the paper's GM takes 224 px)."""
    patch_size: int = 32
    """Patch side in pixels: (224 / 32)^2 = 49 image tokens per camera, 294 for the six."""
    vocab_size: int = 1024
    """Upper bound for the BPE vocabulary; the small corpus may yield fewer tokens."""
    max_positions: int = 2048
    """Longest prompt + generation the text model accepts."""
    chat_template: bool = False
    """Save the processor with `LLAVA_CHAT_TEMPLATE` (the default GM has none and is prompted Alpaca-style)."""

    def __post_init__(self) -> None:
        for name in ("text_layers", "text_hidden", "text_heads", "text_kv_heads", "vision_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TinyGMSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.text_hidden % self.text_heads:
            raise ConfigError(
                f"TinyGMSpec.text_heads={self.text_heads} must divide text_hidden={self.text_hidden}"
            )
        if self.text_heads % self.text_kv_heads:
            raise ConfigError(
                f"TinyGMSpec.text_kv_heads={self.text_kv_heads} must divide text_heads={self.text_heads}"
            )
        if self.vision_layers < 1:
            raise ConfigError(f"TinyGMSpec.vision_layers must be >= 1, got {self.vision_layers}")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"TinyGMSpec.patch_size={self.patch_size} must divide image_size={self.image_size}"
            )
        if self.vocab_size < 300:
            raise ConfigError(
                f"TinyGMSpec.vocab_size must be >= 300 (256 bytes + specials), got {self.vocab_size}"
            )
        if self.text_init_std <= 0 or self.eos_logit_scale <= 0:
            raise ConfigError(
                f"TinyGMSpec.text_init_std and eos_logit_scale must be > 0, got "
                f"{self.text_init_std} and {self.eos_logit_scale}"
            )


# LLaVA-style turns ("USER: ... ASSISTANT:"), the parts of a message in their order, one per line, so that
# each camera's name sits beside its image; an image part is the tokenizer's image token.
LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- message['role'] | upper + ': ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{{- ' ' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def default_tiny_gm_path(arch: TinyArch = "llava") -> Path:
    """Where `harvest` without `--model` builds and finds the tiny GM: $NETROLLER_HOME or ~/.cache/netroller."""
    home = os.environ.get("NETROLLER_HOME")
    root = Path(home).expanduser() if home else Path.home() / ".cache" / "netroller"
    return root / "gm" / f"tiny-{arch}-v{BUILDER_VERSION}"


def build_tiny_gm(
    out: Path,
    *,
    arch: TinyArch = "llava",
    seed: int = 0,
    spec: TinyGMSpec | TinyQwenSpec | TinyAdapterSpec | None = None,
) -> Path:
    """Build a tiny GM of `arch` into `out` (a `save_pretrained` folder, or LLaMA-Adapter's files) and
    return `out`.

    `spec` is a `TinyGMSpec` for "llava", a `TinyQwenSpec` for "qwen2-vl", a `TinyAdapterSpec` for
    "llama-adapter" (default: the class's defaults).
    Skips the work when `out` already holds a complete build of the same arch, seed, spec and builder
    version. The folder appears whole or not at all (built in a temporary folder, then renamed). Refuses to
    replace a non-empty folder that is not a tiny-GM build.
    """
    from netroller.models.gm.llama_adapter.tiny import TinyAdapterSpec, build_adapter_into
    from netroller.models.gm.tiny_qwen import TinyQwenSpec, build_qwen_into

    if arch not in get_args(TinyArch):
        raise ConfigError(f"tiny GM arch must be one of {', '.join(get_args(TinyArch))}, got {arch!r}")
    spec_class = {"llava": TinyGMSpec, "qwen2-vl": TinyQwenSpec, "llama-adapter": TinyAdapterSpec}[arch]
    spec = spec_class() if spec is None else spec
    if not isinstance(spec, spec_class):
        raise ConfigError(f"tiny GM arch {arch!r} takes a {spec_class.__name__}, got a {type(spec).__name__}")
    out = Path(out).expanduser()
    marker = _marker(arch, seed, spec)
    if _is_complete(out, marker):
        return out
    if out.exists() and not (out / STAND_IN_FILE).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"refusing to build the tiny GM into {out}: it exists and is not a tiny-GM folder")
    try:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            if arch == "llava":
                _build_into(tmp, seed=seed, spec=spec)
            elif arch == "qwen2-vl":
                build_qwen_into(tmp, seed=seed, spec=spec)
            else:
                build_adapter_into(tmp, seed=seed, spec=spec)
            (tmp / STAND_IN_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    except OSError:
        # Another process may have renamed its own complete build into place first.
        if _is_complete(out, marker):
            return out
        raise
    return out


def built_files(arch: TinyArch) -> tuple[str, ...]:
    """The files a complete build of `arch` has (besides the stand-in marker); the first holds the weights."""
    if arch == "llama-adapter":
        from netroller.models.gm.llama_adapter.tiny import BUILT_FILES

        return BUILT_FILES
    return ("model.safetensors", "config.json")


def _marker(arch: TinyArch, seed: int, spec: TinyGMSpec | TinyQwenSpec | TinyAdapterSpec) -> dict:
    return {
        "kind": "random-weight stand-in",
        "note": "Random weights: latents from this model carry no knowledge; use it for plumbing and tests.",
        "arch": arch,
        "builder_version": BUILDER_VERSION,
        "seed": int(seed),
        "spec": asdict(spec),
    }


def _is_complete(out: Path, marker: dict) -> bool:
    try:
        found = json.loads((out / STAND_IN_FILE).read_text())
    except (OSError, ValueError):
        return False
    return found == marker and all((out / name).is_file() for name in built_files(marker["arch"]))


def _build_into(folder: Path, *, seed: int, spec: TinyGMSpec) -> None:
    from transformers import LlavaProcessor

    tokenizer = _train_tokenizer(spec.vocab_size)
    processor = LlavaProcessor(
        image_processor=_image_processor(spec.image_size),
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",  # drops CLIP's CLS token ...
        num_additional_image_tokens=1,  # ... which the patch count leaves out
        chat_template=LLAVA_CHAT_TEMPLATE if spec.chat_template else None,
    )
    model = _random_model(len(tokenizer), seed=seed, spec=spec)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def train_bpe(vocab_size: int, special_tokens: Sequence[str], *, unk_token: str | None = None):
    """A byte-level BPE `tokenizers.Tokenizer` trained on the driving corpus; `special_tokens` get ids 0.. in
    order. Byte-level, so any question (DriveLM's carry tags like <c1,CAM_BACK,1088.3,497.5>) can be encoded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=unk_token))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    return tok


def _train_tokenizer(vocab_size: int):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = train_bpe(vocab_size, SPECIAL_TOKENS, unk_token="<unk>")
    # LLaMA convention: BOS in front of every sequence, no EOS at the end of a prompt.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", _BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",  # decoder-only batches are padded on the left for generation
    )


def _image_processor(size: int):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    # Squash 16:9 camera frames to a square rather than centre-crop them: the crop would drop the sides.
    return CLIPImageProcessorPil(
        size={"height": size, "width": size}, do_center_crop=False, crop_size={"height": size, "width": size}
    )


def _random_model(vocab: int, *, seed: int, spec: TinyGMSpec):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=2 * spec.vision_hidden,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=4,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab,
        hidden_size=spec.text_hidden,
        intermediate_size=2 * spec.text_hidden,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=spec.max_positions,
        initializer_range=spec.text_init_std,
        bos_token_id=_BOS_ID,
        eos_token_id=_EOS_ID,
        pad_token_id=_PAD_ID,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=_IMAGE_ID,
        image_seq_length=(spec.image_size // spec.patch_size) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    # Seeded without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight[_EOS_ID] *= spec.eos_logit_scale
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = _BOS_ID, _EOS_ID, _PAD_ID
    gen.do_sample = False
    return model
