"""Capture the GM's residual stream while it answers: `[L, T, H]` latents per sample, with early stopping.

What is captured (as in the authors' code): the output of each chosen decoder layer of the text model
(the residual stream after the layer, before the final norm), at the last prompt token and then at each
generated token, greedy decoding, until `T - 1` tokens are generated or the model emits EOS. Position 0 is
the prefill; position t >= 1 is the forward pass that reads generated token t. EOS itself is not kept (it is
never read back in), so a sample that stops early has `length < T` and zeros after `length`.

Forward hooks on the chosen layers copy only the last position of each step: all layers times all steps
are never held. `T = 1` is a single prefill forward without `generate`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from netroller.errors import ConfigError, ModelError
from netroller.models.gm.loader import LoadedGM
from netroller.models.gm.prompts import format_prompt


def resolve_layers(spec: str | Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Layer indices, ascending, from "all", "0,15,31", "-1" or a sequence of ints (negatives from the end).

    Sorted so that "31,0" and "0,31" give one cache key; duplicates and out-of-range layers raise ConfigError.
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return tuple(range(num_layers))
        try:
            raw = [int(part) for part in text.split(",")]
        except ValueError:
            raise ConfigError(
                f"layers must be 'all' or comma-separated integers like '0,15,31', got {spec!r}"
            ) from None
    else:
        raw = list(spec)
        if not all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in raw):
            raise ConfigError(f"layers must be integers, got {spec!r}")
    if not raw:
        raise ConfigError("layers must name at least one layer, got an empty list")
    resolved = []
    for layer in raw:
        if not -num_layers <= layer < num_layers:
            raise ConfigError(
                f"layer {layer} is out of range for a GM with {num_layers} layers (valid: {-num_layers}..{num_layers - 1})"
            )
        resolved.append(int(layer) % num_layers)
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"layers name the same layer twice: {spec!r}")
    return tuple(sorted(resolved))


@dataclass(frozen=True)
class CapturedLatents:
    """One sample's latents."""

    hidden: np.ndarray
    """[L, T, H] float32; positions >= length are zeros."""
    length: int
    """Valid positions: 1 (the prefill) + generated tokens kept."""
    token_ids: np.ndarray
    """[T-1] int64 generated token ids, -1 after the kept ones."""


class LatentCapturer:
    """Runs a loaded GM on (camera images, question) and returns its latents at the chosen layers."""

    def __init__(
        self, gm: LoadedGM, *, layers: str | Sequence[int], tokens: int, stop_at_eos: bool = True
    ) -> None:
        """`layers` as `resolve_layers` accepts them; `tokens` = T >= 1 positions per sample.

        `stop_at_eos=False` suppresses EOS, so `T - 1` tokens are always generated (benchmarks use it to time
        full-length decoding).
        """
        if isinstance(tokens, bool) or not isinstance(tokens, int | np.integer) or tokens < 1:
            raise ConfigError(f"tokens must be an integer >= 1, got {tokens!r}")
        self.gm = gm
        self.layers = resolve_layers(layers, gm.num_layers)
        self.tokens = int(tokens)
        self.stop_at_eos = stop_at_eos
        self._modules = _decoder_layers(gm.model, gm.num_layers)
        self._image_token = getattr(gm.processor, "image_token", None)
        if not isinstance(self._image_token, str):
            raise ModelError(f"the processor of {gm.name} has no image_token; cannot place the camera images")
        tokenizer = getattr(gm.processor, "tokenizer", None)
        self._can_batch = tokenizer is not None and tokenizer.pad_token_id is not None
        # The prefill-only pass needs logits for the last position alone (a 7B vocab x prompt is large).
        accepts = inspect.signature(gm.model.forward).parameters
        self._prefill_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}

    def capture(self, images: Sequence, prompt: str) -> CapturedLatents:
        """Latents for one sample: its camera images (PIL, in `CAMERAS` order) and its question."""
        return self._run([(images, prompt)])[0]

    def capture_batch(self, items: Sequence[tuple[Sequence, str]]) -> list[CapturedLatents]:
        """Latents for several samples in one `generate` call (left padding); per sample if it cannot pad."""
        if not self._can_batch:
            return [self.capture(images, prompt) for images, prompt in items]
        return self._run(list(items)) if items else []

    def _run(self, items: list[tuple[Sequence, str]]) -> list[CapturedLatents]:
        for images, prompt in items:
            if len(images) == 0:
                raise ConfigError("each sample needs at least one camera image, got none")
            if not prompt.strip():
                raise ConfigError("the prompt of a sample is empty")
        inputs = self._inputs(items)
        steps: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        with self._hooks(steps), torch.inference_mode():
            if self.tokens == 1:
                self.gm.model(**inputs, **self._prefill_kwargs)
                generated = torch.empty((len(items), 0), dtype=torch.long)
            else:
                out = self.gm.model.generate(**inputs, generation_config=self._generation_config())
                generated = out[:, inputs["input_ids"].shape[1] :].cpu()
        # [L, S, B, H] -> [B, L, S, H]; S = forward passes run (T, or fewer when every sample stopped early).
        stacked = torch.stack([torch.stack(steps[layer]) for layer in self.layers]).permute(2, 0, 1, 3)
        stacked = stacked.cpu().numpy()
        return [self._one(stacked[b], generated[b].tolist()) for b in range(len(items))]

    def _inputs(self, items: list[tuple[Sequence, str]]) -> dict:
        texts = [format_prompt(q, image_token=self._image_token, num_images=len(imgs)) for imgs, q in items]
        images = [img for imgs, _ in items for img in imgs]
        batch = self.gm.processor(images=images, text=texts, padding=True, return_tensors="pt")
        model = self.gm.model
        return {
            k: v.to(model.device, dtype=model.dtype if v.is_floating_point() else v.dtype)
            for k, v in batch.items()
        }

    def _generation_config(self):
        gen = copy.deepcopy(self.gm.model.generation_config)
        # One extra step past T-1: the forward pass reading token T-1 is what yields position T-1.
        gen.max_new_tokens, gen.max_length, gen.min_new_tokens = self.tokens, None, None
        gen.do_sample, gen.num_beams, gen.temperature, gen.top_p, gen.top_k = False, 1, None, None, None
        eos = self._eos_ids()
        gen.eos_token_id = eos
        if not self.stop_at_eos:
            # generate() refills a None eos_token_id from the model's defaults; suppressing EOS is the way.
            gen.min_new_tokens = self.tokens
        tokenizer = getattr(self.gm.processor, "tokenizer", None)
        pad = getattr(tokenizer, "pad_token_id", None)
        gen.pad_token_id = pad if pad is not None else (eos[0] if eos else None)
        return gen

    def _eos_ids(self) -> list[int]:
        eos = self.gm.model.generation_config.eos_token_id
        if eos is None:
            eos = getattr(getattr(self.gm.processor, "tokenizer", None), "eos_token_id", None)
        return [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])

    def _one(self, steps: np.ndarray, generated: list[int]) -> CapturedLatents:
        """Cut one sample's [L, S, H] steps at its first EOS and pad to [L, T, H]."""
        gen = generated[: self.tokens - 1]
        eos = set(self._eos_ids()) if self.stop_at_eos else set()
        kept = next((i for i, tok in enumerate(gen) if tok in eos), len(gen))
        length = min(1 + kept, steps.shape[1])
        hidden = np.zeros((len(self.layers), self.tokens, steps.shape[2]), dtype=np.float32)
        hidden[:, :length] = steps[:, :length]
        token_ids = np.full(self.tokens - 1, -1, dtype=np.int64)
        token_ids[: length - 1] = gen[: length - 1]
        return CapturedLatents(hidden=hidden, length=length, token_ids=token_ids)

    @contextmanager
    def _hooks(self, steps: dict[int, list[torch.Tensor]]):
        def make(layer: int):
            def hook(_module, _args, output):
                out = output[0] if isinstance(output, tuple) else output
                # Only the last position, copied out (not a view that would pin the whole prefill tensor).
                steps[layer].append(out[:, -1, :].to(torch.float32, copy=True))

            return hook

        handles = [self._modules[layer].register_forward_hook(make(layer)) for layer in self.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _decoder_layers(model: torch.nn.Module, num_layers: int) -> torch.nn.ModuleList:
    """The text model's decoder layers (not the vision tower's), for any HF VLM layout."""
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        layers = getattr(get_decoder(), "layers", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) == num_layers:
            return layers
    for name, module in model.named_modules():
        if (
            name.endswith("layers")
            and isinstance(module, torch.nn.ModuleList)
            and len(module) == num_layers
            and ("language_model" in name or "text_model" in name)
        ):
            return module
    raise ModelError(f"cannot find the {num_layers} text decoder layers in {type(model).__name__}")
