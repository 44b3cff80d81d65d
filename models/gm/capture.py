"""Capture the GM's residual stream while it answers: `[L, T, H]` latents per sample, with early stopping.

What is captured (as in the authors' code): the output of each chosen decoder layer of the text model
(the residual stream after the layer, before the final norm), at the last prompt token and then at each
answer token, until `T - 1` answer tokens or EOS. Position 0 is the last prompt token; position t >= 1 is the
token t of the answer. EOS itself is not kept (it is never read back in), so a sample that stops early has
`length < T` and zeros after `length`. The answer is either
- generated (`latents="generated"`): greedy, or sampled with temperature and top-p (the authors' test
  setting: 0.1 / 0.75) from a generator seeded per sample (its key, e.g. the sample token, and a run seed),
  so a sample's answer does not depend on which batch, worker or resumed run computes it; or
- teacher-forced (`latents="teacher-forced"`, the authors' training setting): the GM reads the prompt plus
  the sample's ground-truth answer in one forward pass. As the authors do, the text prompt + answer is
  tokenized as one string, and the kept positions start at the prompt's own last token (the prompt tokenized
  alone): where a tokenizer merges across the boundary, both sides agree with the authors' labels mask.

Forward hooks on the chosen layers copy only the positions kept (the last one of each generation step, or
the gathered prompt-end and answer positions of a teacher-forced pass): all layers times all positions are
never held. Generated `T = 1` is a single prefill forward without `generate`.

`LatentCapturer` runs Hugging Face GMs; LLaMA-Adapter GMs have `llama_adapter.capture.AdapterCapturer`, with
the same interface (`Capturer`) and semantics, and the checks, EOS cut and sampler of this module.
`CaptureSpec.capturer()` builds the one the GM's backend needs.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch

from netroller.errors import ConfigError, ModelError
from netroller.models.gm.loader import AttnImplementation, GMDtype, LoadedGM, load_gm
from netroller.models.gm.prompts import PromptFormat, render_prompt, resolve_format
from netroller.storage.schema import LATENT_KINDS, LatentKind

DecodeMode = Literal["greedy", "sample"]
DECODE_MODES: tuple[str, ...] = get_args(DecodeMode)


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


@dataclass(frozen=True, kw_only=True)
class Decoding:
    """How generated answers are decoded; `describe()` is what the cache key records."""

    mode: DecodeMode = "greedy"
    """"greedy", or "sample": temperature + nucleus (top-p) sampling."""
    temperature: float = 0.1
    """Softmax temperature for "sample" (the authors' 0.1); > 0."""
    top_p: float = 0.75
    """Nucleus mass for "sample" (the authors' 0.75), in (0, 1]."""
    seed: int = 0
    """Run seed; each sample's generator is seeded from it and the sample's key."""

    def __post_init__(self) -> None:
        if self.mode not in DECODE_MODES:
            raise ConfigError(f"decode must be one of {', '.join(DECODE_MODES)}, got {self.mode!r}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top-p must lie in (0, 1], got {self.top_p!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")

    def describe(self) -> str:
        if self.mode == "greedy":
            return "greedy"
        return f"sample(temperature={self.temperature:g},top_p={self.top_p:g},seed={self.seed})"


def sample_seed(key: str, seed: int) -> int:
    """The generator seed of one sample: a hash of the run seed and the sample's key (63 bits)."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def top_p_draw(probs: torch.Tensor, top_p: float, generator: torch.Generator) -> int:
    """One token from `probs` [V] (float32, CPU): the smallest set of most probable tokens whose mass reaches
    `top_p` (a token is kept while the mass before it is <= top_p, as the authors' rule), renormalised."""
    sorted_probs, order = torch.sort(probs, descending=True, stable=True)
    before = torch.cumsum(sorted_probs, dim=0) - sorted_probs
    sorted_probs = torch.where(before > top_p, torch.zeros_like(sorted_probs), sorted_probs)
    pick = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return int(order[pick])


class SeededSampler:
    """A logits processor that samples each row with its own generator and leaves only that token
    (greedy decoding then takes it): per-sample reproducible, whatever the batch."""

    def __init__(self, seeds: Sequence[int], decoding: Decoding):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.decoding = decoding

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # Softmax in float32 on the CPU: the draw must not depend on the device or the GM's dtype kernels.
        probs = torch.softmax(scores.detach().float().cpu() / self.decoding.temperature, dim=-1)
        chosen = torch.full_like(scores, float("-inf"))
        for row, generator in enumerate(self.generators):
            chosen[row, top_p_draw(probs[row], self.decoding.top_p, generator)] = 0.0
        return chosen


@dataclass(frozen=True)
class Query:
    """One sample as the GM sees it."""

    images: Sequence
    """Camera images (PIL), in `CAMERAS` order."""
    question: str
    """The question, not yet wrapped in the prompt format."""
    answer: str | None = None
    """The ground-truth answer (teacher forcing reads it)."""
    key: str = ""
    """What seeds this sample's sampling (its sample token)."""


@dataclass(frozen=True)
class CapturedLatents:
    """One sample's latents."""

    hidden: np.ndarray
    """[L, T, H] float32; positions >= length are zeros."""
    length: int
    """Valid positions: 1 (the last prompt token) + answer tokens kept."""
    token_ids: np.ndarray
    """[T-1] int64 answer token ids (generated or read), -1 after the kept ones."""


class Capturer:
    """What every GM backend's capturer shares (`LatentCapturer` for Hugging Face,
    `netroller.models.gm.llama_adapter.capture.AdapterCapturer`): its settings, checked once, and the
    interface a harvest and an online run use; a backend implements `capture_batch`."""

    def __init__(
        self,
        gm: LoadedGM,
        *,
        layers: str | Sequence[int],
        tokens: int,
        cameras: Sequence[str],
        latents: LatentKind = "generated",
        decoding: Decoding = Decoding(),
        prompt_format: PromptFormat = "auto",
        stop_at_eos: bool = True,
    ) -> None:
        """`layers` as `resolve_layers` accepts them; `tokens` = T >= 1 positions per sample; `cameras` names
        the images of every sample, in their order (the chat prompt states them).

        `stop_at_eos=False` suppresses EOS, so `T - 1` tokens are always generated (benchmarks use it to time
        full-length decoding).
        """
        self.tokens = check_capture_settings(tokens, latents)
        self.gm = gm
        self.cameras = tuple(cameras)
        self.layers = resolve_layers(layers, gm.num_layers)
        self.latents = latents
        self.decoding = decoding
        self.prompt_format = resolve_format(gm.processor, prompt_format)
        self.stop_at_eos = stop_at_eos

    @property
    def decode(self) -> str:
        """What the cache key records as the decoding: "none" for teacher-forced latents."""
        return describe_decode(self.latents, self.decoding)

    def capture(
        self, images: Sequence, question: str, *, answer: str | None = None, key: str = ""
    ) -> CapturedLatents:
        """Latents for one sample: its camera images (PIL, in `CAMERAS` order), question, answer and key."""
        return self.capture_batch([Query(images, question, answer, key)])[0]

    def capture_batch(self, queries: Sequence[Query]) -> list[CapturedLatents]:
        raise NotImplementedError


def check_capture_settings(tokens: object, latents: object) -> int:
    """T as an int; ConfigError for T < 1 or an unknown kind of latents."""
    if isinstance(tokens, bool) or not isinstance(tokens, int | np.integer) or tokens < 1:
        raise ConfigError(f"tokens must be an integer >= 1, got {tokens!r}")
    if latents not in LATENT_KINDS:
        raise ConfigError(f"latents must be one of {', '.join(LATENT_KINDS)}, got {latents!r}")
    return int(tokens)


def describe_decode(latents: LatentKind, decoding: Decoding) -> str:
    """What the cache key records as the decoding: "none" for teacher-forced latents."""
    return "none" if latents == "teacher-forced" else decoding.describe()


def check_queries(queries: Sequence[Query], cameras: Sequence[str], latents: LatentKind) -> None:
    """ConfigError for a sample with no or too many images, an empty question, or no answer to teacher-force."""
    for q in queries:
        if not 0 < len(q.images) <= len(cameras):
            raise ConfigError(f"each sample needs 1 to {len(cameras)} camera images, got {len(q.images)}")
        if not q.question.strip():
            raise ConfigError("the question of a sample is empty")
        if latents == "teacher-forced" and q.answer is None:
            raise ConfigError(
                f"teacher-forced latents need each sample's answer; sample {q.key or '?'} has none "
                "(give a DriveLM file whose QA items have answers)"
            )


def cut_generated(steps: np.ndarray, generated: list[int], *, tokens: int, eos: set[int]) -> CapturedLatents:
    """One sample's [L, S, H] generation steps cut at its first EOS (among the first T-1 tokens) and padded
    to [L, T, H]; S may be < T when every sample of its batch stopped early."""
    gen = generated[: tokens - 1]
    kept = next((i for i, tok in enumerate(gen) if tok in eos), len(gen))
    length = min(1 + kept, steps.shape[1])
    hidden = np.zeros((steps.shape[0], tokens, steps.shape[2]), dtype=np.float32)
    hidden[:, :length] = steps[:, :length]
    token_ids = np.full(tokens - 1, -1, dtype=np.int64)
    token_ids[: length - 1] = gen[: length - 1]
    return CapturedLatents(hidden=hidden, length=length, token_ids=token_ids)


def forced_latents(kept: np.ndarray, answer: list[int], *, tokens: int) -> CapturedLatents:
    """A teacher-forced sample: `kept` [L, >= 1 + len(answer), H] at the last prompt token and its answer
    tokens (at most T-1), padded to [L, T, H]."""
    length = 1 + len(answer)
    hidden = np.zeros((kept.shape[0], tokens, kept.shape[2]), dtype=np.float32)
    hidden[:, :length] = kept[:, :length]
    token_ids = np.full(tokens - 1, -1, dtype=np.int64)
    token_ids[: len(answer)] = answer
    return CapturedLatents(hidden=hidden, length=length, token_ids=token_ids)


@dataclass
class _Capture:
    """Where the hooks put what they copy: per layer, one [B, H] tensor per generation step, or one
    [B, T, H] tensor gathered at `positions` [B, T] in a teacher-forced pass."""

    layers: tuple[int, ...]
    positions: torch.Tensor | None = None
    steps: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.steps = {layer: [] for layer in self.layers}


class LatentCapturer(Capturer):
    """Runs a loaded Hugging Face GM on samples (camera images, question, answer) and returns its latents at
    the chosen layers."""

    def __init__(self, gm: LoadedGM, **settings) -> None:
        """`settings` as `Capturer`'s."""
        super().__init__(gm, **settings)
        self._modules = _decoder_layers(gm.model, gm.num_layers)
        self._tokenizer = getattr(gm.processor, "tokenizer", None)
        if self._tokenizer is None:
            raise ModelError(f"the processor of {gm.name} has no tokenizer")
        self._can_batch = self._tokenizer.pad_token_id is not None
        # Passes that need no new token need logits for the last position alone (a 7B vocab x prompt is large).
        accepts = inspect.signature(gm.model.forward).parameters
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}

    def capture_batch(self, queries: Sequence[Query]) -> list[CapturedLatents]:
        """Latents for several samples in one pass (padded); per sample if the tokenizer cannot pad."""
        if not self._can_batch:
            return [self._run([q])[0] for q in queries]
        return self._run(list(queries)) if queries else []

    def _run(self, queries: list[Query]) -> list[CapturedLatents]:
        check_queries(queries, self.cameras, self.latents)
        inputs = self._prompt_inputs(queries)
        if self.latents == "teacher-forced":
            return self._teacher_forced(queries, inputs)
        return self._generated(queries, inputs)

    def _render(self, q: Query) -> str:
        return render_prompt(
            self.gm.processor, q.question, fmt=self.prompt_format, cameras=self.cameras[: len(q.images)]
        )

    def _prompt_inputs(self, queries: list[Query]) -> dict:
        texts = [self._render(q) for q in queries]
        images = [img for q in queries for img in q.images]
        return dict(self.gm.processor(images=images, text=texts, padding=True, return_tensors="pt"))

    def _to_model(self, inputs: dict) -> dict:
        model = self.gm.model
        return {
            k: v.to(model.device, dtype=model.dtype if v.is_floating_point() else v.dtype)
            for k, v in inputs.items()
        }

    def _generated(self, queries: list[Query], inputs: dict) -> list[CapturedLatents]:
        capture = _Capture(self.layers)
        with self._hooks(capture), torch.inference_mode():
            if self.tokens == 1:
                self.gm.model(**self._to_model(inputs), **self._last_logits)
                generated = torch.empty((len(queries), 0), dtype=torch.long)
            else:
                extra = {}
                if self.decoding.mode == "sample":
                    from transformers import LogitsProcessorList

                    seeds = [sample_seed(q.key, self.decoding.seed) for q in queries]
                    extra["logits_processor"] = LogitsProcessorList([SeededSampler(seeds, self.decoding)])
                out = self.gm.model.generate(
                    **self._to_model(inputs), generation_config=self._generation_config(), **extra
                )
                generated = out[:, inputs["input_ids"].shape[1] :].cpu()
        # [L, S, B, H] -> [B, L, S, H]; S = forward passes run (T, or fewer when every sample stopped early).
        stacked = torch.stack([torch.stack(capture.steps[layer]) for layer in self.layers]).permute(
            2, 0, 1, 3
        )
        stacked = stacked.cpu().numpy()
        return [self._cut(stacked[b], generated[b].tolist()) for b in range(len(queries))]

    def _teacher_forced(self, queries: list[Query], prompts: dict) -> list[CapturedLatents]:
        """One forward over prompt + answer per sample, right-padded (causal attention never looks right, so
        no position of a shorter row sees padding and no position ids need shifting)."""
        texts = [self._render(q) + q.answer for q in queries]
        images = [img for q in queries for img in q.images]
        inputs = dict(self.gm.processor(images=images, text=texts, padding=True, return_tensors="pt"))
        mask = inputs["attention_mask"].bool()
        prompt_len = prompts["attention_mask"].sum(dim=1).tolist()
        # Kept: the last prompt token and up to T-1 tokens after it; nothing later is computed.
        ends = [
            min(int(n), p + self.tokens - 1)
            for n, p in zip(mask.sum(dim=1).tolist(), prompt_len, strict=True)
        ]
        width = max(ends)
        per_token = [k for k, v in inputs.items() if torch.is_tensor(v) and v.shape == mask.shape]
        full = {k: torch.zeros((len(queries), width), dtype=inputs[k].dtype) for k in per_token}
        positions = torch.zeros((len(queries), self.tokens), dtype=torch.long)
        answers = []
        for b, (p, end) in enumerate(zip(prompt_len, ends, strict=True)):
            for k in per_token:
                full[k][b, :end] = inputs[k][b][mask[b]][:end]
            answers.append(full["input_ids"][b, p:end].tolist())
            # Position 0: the last prompt token; t >= 1: answer token t (padded rows repeat their last one).
            kept = torch.arange(p - 1, end)
            positions[b, : len(kept)] = kept
            positions[b, len(kept) :] = kept[-1]
        rest = {k: v for k, v in inputs.items() if k not in per_token}
        capture = _Capture(self.layers, positions=positions)
        with self._hooks(capture), torch.inference_mode():
            self.gm.model(**self._to_model({**rest, **full}), **self._last_logits)
        # [L, B, T, H] -> [B, L, T, H]
        stacked = torch.stack([capture.steps[layer][0] for layer in self.layers]).permute(1, 0, 2, 3)
        stacked = stacked.cpu().numpy()
        return [forced_latents(stacked[b], ans, tokens=self.tokens) for b, ans in enumerate(answers)]

    def _generation_config(self):
        gen = copy.deepcopy(self.gm.model.generation_config)
        # One extra step past T-1: the forward pass reading token T-1 is what yields position T-1.
        gen.max_new_tokens, gen.max_length, gen.min_new_tokens = self.tokens, None, None
        # Sampling, when asked, is done by `SeededSampler` (per-sample generators); generate() stays greedy.
        gen.do_sample, gen.num_beams, gen.temperature, gen.top_p, gen.top_k = False, 1, None, None, None
        eos = self._eos_ids()
        gen.eos_token_id = eos
        if not self.stop_at_eos:
            # generate() refills a None eos_token_id from the model's defaults; suppressing EOS is the way.
            gen.min_new_tokens = self.tokens
        pad = self._tokenizer.pad_token_id
        gen.pad_token_id = pad if pad is not None else (eos[0] if eos else None)
        return gen

    def _eos_ids(self) -> list[int]:
        eos = self.gm.model.generation_config.eos_token_id
        if eos is None:
            eos = self._tokenizer.eos_token_id
        return [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])

    def _cut(self, steps: np.ndarray, generated: list[int]) -> CapturedLatents:
        eos = set(self._eos_ids()) if self.stop_at_eos else set()
        return cut_generated(steps, generated, tokens=self.tokens, eos=eos)

    @contextmanager
    def _hooks(self, capture: _Capture):
        def make(layer: int):
            def hook(_module, _args, output):
                out = output[0] if isinstance(output, tuple) else output  # [B, S, H]
                if capture.positions is None:
                    # Only the last position, copied out (not a view that would pin the whole prefill tensor).
                    capture.steps[layer].append(out[:, -1, :].to(torch.float32, copy=True))
                else:
                    idx = capture.positions.to(out.device)  # [B, T]
                    rows = torch.arange(out.shape[0], device=out.device)[:, None]
                    capture.steps[layer].append(out[rows, idx].to(torch.float32))  # [B, T, H]

            return hook

        handles = [self._modules[layer].register_forward_hook(make(layer)) for layer in self.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


@dataclass(frozen=True, kw_only=True)
class CaptureSpec:
    """Everything a process needs to load the GM and capture latents as a run asked (picklable: the harvest
    hands it to each Ray actor, an online run builds its capturer from it)."""

    model: str
    """GM folder (absolute for actors on other nodes) or hub id."""
    device: str
    """"cpu" or "cuda"."""
    compute_dtype: GMDtype
    attn_implementation: AttnImplementation
    layers: tuple[int, ...]
    tokens: int
    cameras: tuple[str, ...]
    latents: LatentKind
    decoding: Decoding
    prompt_format: PromptFormat
    channel_order: str | None = None
    """LLaMA-Adapter only: "bgr" | "rgb" (None = its default, the authors' BGR)."""

    def capturer(self, *, fingerprint: bool = False) -> Capturer:
        """Load the GM (its files are not re-hashed unless `fingerprint`) and build its backend's capturer."""
        gm = load_gm(
            self.model,
            device=self.device,
            dtype=self.compute_dtype,
            attn_implementation=self.attn_implementation,
            fingerprint=fingerprint,
            channel_order=self.channel_order,
        )
        capturer_class: type = LatentCapturer
        if gm.info.backend == "llama-adapter":
            from netroller.models.gm.llama_adapter.capture import AdapterCapturer

            capturer_class = AdapterCapturer
        return capturer_class(
            gm,
            layers=self.layers,
            tokens=self.tokens,
            cameras=self.cameras,
            latents=self.latents,
            decoding=self.decoding,
            prompt_format=self.prompt_format,
        )


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
