"""The second embedded tiny GM: a random-weight Qwen2-VL built locally, nothing downloaded.

It gives the harvest a GM of another family than the tiny LLaVA: a chat template with Qwen's roles and
vision start/end tokens, dynamic-resolution images (Qwen2-VL's `smart_resize` keeps each camera's aspect
ratio, so a 1600 x 900 nuScenes frame becomes a 4 x 8 grid of merged patches: 32 image tokens per camera,
192 for the six) and multimodal RoPE. Build it with `build_tiny_gm(out, arch="qwen2-vl")`
(`netroller.models.gm.tiny`), which marks the folder as a random-weight stand-in.

- Model: `Qwen2VLForConditionalGeneration` (a 2-layer vision tower of width 64, 14 px patches merged 2 x 2;
  a 4-layer Qwen2 text model of width 128), loaded back through `AutoModelForImageTextToText`. Its decoder
  layers are `model.model.language_model.layers` (`get_decoder().layers`).
- Tokenizer: byte-level BPE trained on the tiny LLaVA's corpus, with Qwen's special tokens first (ids
  0..13: <|endoftext|>, <|im_start|>, <|im_end|>, ..., <|vision_start|>, <|vision_end|>, <|image_pad|>, ...);
  no BOS, EOS <|im_end|>, padding <|endoftext|> on the left, as Qwen2-VL-Instruct.
- Processor: `Qwen2VLImageProcessorPil` with min/max pixels set so a camera gives 16 to 40 image tokens, and
  the chat template below. The processor class is `PaddleOCRVLProcessor`, not `Qwen2VLProcessor`: the latter
  also loads a video processor, and every video processor in transformers needs torchvision, so
  `AutoProcessor` cannot load a Qwen2VLProcessor folder without it. PaddleOCRVLProcessor is the image half
  of Qwen2VLProcessor (same image-token expansion by `image_grid_thw / merge_size**2`, same
  `mm_token_type_ids` for M-RoPE) without the video processor.

Random weights are made to behave a little like a language model, as for the tiny LLaVA: text init std 0.2
and the EOS row of the LM head scaled, so greedy answers depend on the input and some stop early.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from netroller.errors import ConfigError

# Qwen2's special tokens in Qwen's order; here they take ids 0..13.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_TOKEN_ID = {token: i for i, token in enumerate(QWEN_SPECIAL_TOKENS)}

# Qwen's chat format: a default system turn, <|im_start|>role ... <|im_end|> turns, an image part as
# <|vision_start|><|image_pad|><|vision_end|> (the processor widens the pad to the image's token count).
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True, kw_only=True)
class TinyQwenSpec:
    """Architecture of the tiny Qwen2-VL GM; the defaults are what `build_tiny_gm(arch="qwen2-vl")` builds."""

    text_layers: int = 4
    """Decoder layers of the Qwen2 text model (the GM layers a harvest captures)."""
    text_hidden: int = 128
    """Residual-stream width H of the text model (the width of every captured latent)."""
    text_heads: int = 4
    """Attention heads of the text model; the head width must be a multiple of 8 (M-RoPE's three sections)."""
    text_kv_heads: int = 2
    """Key/value heads (grouped-query attention, as Qwen2); must divide `text_heads`."""
    text_init_std: float = 0.2
    """Init std of the text model; large so that greedy decoding depends on its input."""
    eos_logit_scale: float = 2.0
    """Factor on the LM head's <|im_end|> row, so that decoding stops early on some inputs."""
    vision_hidden: int = 64
    """Width of the vision tower."""
    vision_layers: int = 2
    """Transformer blocks of the vision tower."""
    vision_heads: int = 4
    """Attention heads of the vision tower; the head width must be a multiple of 4 (2-D rotary)."""
    patch_size: int = 14
    """Patch side in pixels (Qwen2-VL's)."""
    merge_size: int = 2
    """Patches merged per side into one image token (Qwen2-VL's)."""
    min_image_tokens: int = 16
    """Fewest image tokens per camera: smaller frames are scaled up to at least this many."""
    max_image_tokens: int = 40
    """Most image tokens per camera: larger frames are scaled down (1600 x 900 -> 4 x 8 = 32 tokens)."""
    vocab_size: int = 1024
    """Upper bound for the BPE vocabulary; the small corpus may yield fewer tokens."""
    max_positions: int = 4096
    """Longest prompt + generation the text model accepts."""

    def __post_init__(self) -> None:
        for name in (
            "text_layers",
            "text_hidden",
            "text_heads",
            "text_kv_heads",
            "vision_hidden",
            "vision_layers",
            "vision_heads",
            "patch_size",
            "merge_size",
            "min_image_tokens",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"TinyQwenSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.text_hidden % self.text_heads or (self.text_hidden // self.text_heads) % 8:
            raise ConfigError(
                f"TinyQwenSpec.text_heads={self.text_heads} must divide text_hidden={self.text_hidden} "
                "into heads whose width is a multiple of 8"
            )
        if self.text_heads % self.text_kv_heads:
            raise ConfigError(
                f"TinyQwenSpec.text_kv_heads={self.text_kv_heads} must divide text_heads={self.text_heads}"
            )
        if self.vision_hidden % self.vision_heads or (self.vision_hidden // self.vision_heads) % 4:
            raise ConfigError(
                f"TinyQwenSpec.vision_heads={self.vision_heads} must divide vision_hidden={self.vision_hidden} "
                "into heads whose width is a multiple of 4"
            )
        if self.max_image_tokens < self.min_image_tokens:
            raise ConfigError(
                f"TinyQwenSpec.max_image_tokens={self.max_image_tokens} must be >= "
                f"min_image_tokens={self.min_image_tokens}"
            )
        if self.vocab_size < 300:
            raise ConfigError(
                f"TinyQwenSpec.vocab_size must be >= 300 (256 bytes + specials), got {self.vocab_size}"
            )
        if self.text_init_std <= 0 or self.eos_logit_scale <= 0:
            raise ConfigError(
                f"TinyQwenSpec.text_init_std and eos_logit_scale must be > 0, got "
                f"{self.text_init_std} and {self.eos_logit_scale}"
            )

    @property
    def mrope_section(self) -> list[int]:
        """M-RoPE's (time, height, width) split of the rotary half of a text head, in Qwen2-VL's 2:3:3 ratio."""
        half = self.text_hidden // self.text_heads // 2
        time = half // 4
        height = (half - time) // 2
        return [time, height, half - time - height]


def build_qwen_into(folder: Path, *, seed: int, spec: TinyQwenSpec) -> None:
    """Write the tiny Qwen2-VL's model and processor into `folder` (use `build_tiny_gm`, which marks it)."""
    from transformers import PaddleOCRVLProcessor

    tokenizer = _tokenizer(spec.vocab_size)
    processor = PaddleOCRVLProcessor(
        image_processor=_image_processor(spec), tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    )
    model = _random_model(len(tokenizer), seed=seed, spec=spec)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _tokenizer(vocab_size: int):
    from transformers import PreTrainedTokenizerFast

    from netroller.models.gm.tiny import train_bpe

    return PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(vocab_size, QWEN_SPECIAL_TOKENS),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        padding_side="left",  # decoder-only batches are padded on the left for generation
    )


def _image_processor(spec: TinyQwenSpec):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pixels_per_token = (spec.patch_size * spec.merge_size) ** 2
    return Qwen2VLImageProcessorPil(
        min_pixels=spec.min_image_tokens * pixels_per_token,
        max_pixels=spec.max_image_tokens * pixels_per_token,
        patch_size=spec.patch_size,
        merge_size=spec.merge_size,
        temporal_patch_size=2,
    )


def _random_model(vocab: int, *, seed: int, spec: TinyQwenSpec):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    eos, pad = _TOKEN_ID["<|im_end|>"], _TOKEN_ID["<|endoftext|>"]
    text = {
        "vocab_size": vocab,
        "hidden_size": spec.text_hidden,
        "intermediate_size": 2 * spec.text_hidden,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.text_heads,
        "num_key_value_heads": spec.text_kv_heads,
        "max_position_embeddings": spec.max_positions,
        "initializer_range": spec.text_init_std,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": spec.mrope_section},
        "bos_token_id": None,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }
    vision = {
        "depth": spec.vision_layers,
        "embed_dim": spec.vision_hidden,
        "hidden_size": spec.text_hidden,  # the merger projects image tokens to the text width
        "num_heads": spec.vision_heads,
        "mlp_ratio": 2,
        "patch_size": spec.patch_size,
        "spatial_merge_size": spec.merge_size,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=_TOKEN_ID["<|image_pad|>"],
        video_token_id=_TOKEN_ID["<|video_pad|>"],
        vision_start_token_id=_TOKEN_ID["<|vision_start|>"],
        vision_end_token_id=_TOKEN_ID["<|vision_end|>"],
    )
    # Seeded without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight[eos] *= spec.eos_logit_scale
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = None, [eos, pad], pad
    gen.do_sample = False
    return model
