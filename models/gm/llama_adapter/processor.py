"""How text and camera images become LLaMA-Adapter V2 inputs, as the authors prepare them.

- Text: LLaMA's sentencepiece `tokenizer.model`; a prompt is encoded with BOS and without EOS.
- Images: resized to the CLIP tower's side (224) with PIL's bicubic filter, scaled to [0, 1], normalised with
  CLIP's mean and std. The authors read frames with OpenCV (`cv2.imread`), so their model saw channels in
  BGR order, normalised with CLIP's RGB statistics: "bgr" (the default here) reproduces that, "rgb" feeds
  the channels as CLIP was trained on them. The order is part of `ImageTransform.to_dict()`, which the prompt
  hash (and so the cache key) covers.
- The prompt's image slot is the plain text "<image>", once (the authors' instruction is "<image>\\n" +
  question): the images enter through the adapter, not through the token stream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image

from netroller.errors import ConfigError, ModelError

ChannelOrder = Literal["bgr", "rgb"]
CHANNEL_ORDERS: tuple[str, ...] = get_args(ChannelOrder)
DEFAULT_CHANNEL_ORDER: ChannelOrder = "bgr"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SLOT = "<image>"


class Tokenizer:
    """LLaMA's sentencepiece tokenizer (ids as Meta's `Tokenizer`: BOS/EOS added by `encode` on request)."""

    def __init__(self, path: Path) -> None:
        from sentencepiece import SentencePieceProcessor

        try:
            self._sp = SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as err:
            raise ModelError(f"{path}: not a sentencepiece model ({err})") from err
        self.path = Path(path)
        self.vocab_size: int = self._sp.vocab_size()
        self.bos_id: int = self._sp.bos_id()
        self.eos_id: int = self._sp.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise ModelError(f"{path}: the sentencepiece model has no BOS or EOS piece")

    def encode(self, text: str, *, bos: bool, eos: bool) -> list[int]:
        ids = self._sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)


@dataclass(frozen=True, kw_only=True)
class ImageTransform:
    """PIL image -> [3, size, size] float32, the authors' preprocessing (see the module docstring)."""

    size: int
    channel_order: ChannelOrder = DEFAULT_CHANNEL_ORDER
    resample: str = "bicubic"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(
                f"channel order must be one of {', '.join(CHANNEL_ORDERS)}, got {self.channel_order!r}"
            )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        resized = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
        pixels = np.asarray(resized, dtype=np.float32) / 255.0  # (S, S, 3)
        if self.channel_order == "bgr":
            pixels = pixels[..., ::-1]
        x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (x - mean) / std

    def to_dict(self) -> dict:
        """The settings, for the prompt hash (the name `prompt_hash` looks for on an image processor)."""
        return {"kind": "llama-adapter", **asdict(self)}


class AdapterProcessor:
    """The tokenizer and the image transform, with what `netroller.models.gm.prompts` reads of a processor:
    no chat template (prompts are Alpaca-style), and one plain-text image slot."""

    image_token = IMAGE_SLOT
    alpaca_image_slot = IMAGE_SLOT
    chat_template = None

    def __init__(self, tokenizer: Tokenizer, image_processor: ImageTransform) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    def images(self, images) -> torch.Tensor:
        """[N, 3, S, S] for N PIL images."""
        return torch.stack([self.image_processor(im) for im in images])
