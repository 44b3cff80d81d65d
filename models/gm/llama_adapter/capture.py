"""Latents of a LLaMA-Adapter V2 GM, with the semantics of `netroller.models.gm.capture` (its module
docstring): the outputs of the chosen blocks before the final norm, at the last prompt token and at each
generated or teacher-forced answer token, early stop at EOS, greedy or seeded per-sample sampling.

As the authors' harvest does (their `generate` / `forward_inference` collect every block's output at the
newest token): a prefill pass over the prompt, then one pass per generated token through a KV cache. Batches
are right-padded and every row keeps its own positions, so a sample's latents do not depend on its batch.
Teacher forcing reads the prompt + answer encoded as one string with BOS, in one pass, as their training
`forward` does (their labels keep the last prompt token through the last answer token).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from netroller.models.gm.capture import (
    CapturedLatents,
    Capturer,
    Query,
    SeededSampler,
    check_queries,
    cut_generated,
    forced_latents,
    sample_seed,
)
from netroller.models.gm.llama_adapter.llama import KVCache, TokenBatch
from netroller.models.gm.loader import LoadedGM
from netroller.models.gm.prompts import render_prompt


class AdapterCapturer(Capturer):
    """Runs a loaded LLaMA-Adapter GM on samples and returns its latents at the chosen layers."""

    def __init__(self, gm: LoadedGM, **settings) -> None:
        """`settings` as `Capturer`'s (the prompt format resolves to "alpaca": the GM has no chat template)."""
        super().__init__(gm, **settings)
        self._tokenizer = gm.processor.tokenizer
        param = next(gm.model.parameters())
        self._device, self._dtype = param.device, param.dtype

    def capture_batch(self, queries: Sequence[Query]) -> list[CapturedLatents]:
        queries = list(queries)
        if not queries:
            return []
        check_queries(queries, self.cameras, self.latents)
        with torch.inference_mode():
            visual = self._visual(queries)
            prompts = [self._tokenizer.encode(self._render(q), bos=True, eos=False) for q in queries]
            if self.latents == "teacher-forced":
                return self._teacher_forced(queries, prompts, visual)
            return self._generated(queries, prompts, visual)

    def _render(self, q: Query) -> str:
        cameras = self.cameras[: len(q.images)]
        return render_prompt(self.gm.processor, q.question, fmt=self.prompt_format, cameras=cameras)

    def _visual(self, queries: list[Query]) -> torch.Tensor:
        """[B, query_len, dim]; samples with the same number of cameras go through CLIP together."""
        out: list[torch.Tensor | None] = [None] * len(queries)
        for n in sorted({len(q.images) for q in queries}):
            rows = [i for i, q in enumerate(queries) if len(q.images) == n]
            images = torch.stack(
                [self.gm.processor.images(queries[i].images) for i in rows]
            )  # (b, n, 3, S, S)
            encoded = self.gm.model.encode_images(images.to(self._device, self._dtype))
            for i, v in zip(rows, encoded, strict=True):
                out[i] = v
        return torch.stack(out)  # type: ignore[arg-type]  # every row filled above

    def _right_padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, S] (0 after each row) and positions [B, S] (0..S-1 for every row)."""
        width = max(len(r) for r in rows)
        tokens = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            tokens[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        positions = torch.arange(width).expand(len(rows), width)
        return tokens.to(self._device), positions.to(self._device)

    def _generated(
        self, queries: list[Query], prompts: list[list[int]], visual: torch.Tensor
    ) -> list[CapturedLatents]:
        model, T = self.gm.model, self.tokens
        tokens, positions = self._right_padded(prompts)
        last = torch.tensor([len(p) - 1 for p in prompts], device=self._device)  # (B,)
        # Slots for the prompt and the T-1 answer tokens read after it (padding slots are overwritten first).
        cache = None
        if T > 1:
            cache = KVCache(
                model.params, len(queries), tokens.shape[1] + T - 1, dtype=self._dtype, device=self._device
            )
        out = model(
            TokenBatch(tokens, positions, last[:, None]),
            visual,
            layers=self.layers,
            cache=cache,
            logits=T > 1,
        )
        steps = [out.hidden[:, :, 0].float().cpu()]  # per pass: [B, L, H]
        eos = {self._tokenizer.eos_id}
        sampler = None
        if self.decoding.mode == "sample":
            sampler = SeededSampler([sample_seed(q.key, self.decoding.seed) for q in queries], self.decoding)
        generated: list[list[int]] = [[] for _ in queries]
        for t in range(1, T):
            logits = out.logits
            if not self.stop_at_eos:
                logits[:, self._tokenizer.eos_id] = float("-inf")  # as generate()'s min_new_tokens: never EOS
            if sampler is not None:
                logits = sampler(None, logits)
            chosen = logits.argmax(dim=-1)  # (B,)
            for b, token in enumerate(chosen.tolist()):
                generated[b].append(token)
            if self.stop_at_eos and all(eos & set(g) for g in generated):
                break  # every row has stopped: nothing after its EOS is kept
            last = last + 1
            batch = TokenBatch(chosen[:, None], last[:, None], torch.zeros_like(last)[:, None])
            out = model(batch, visual, layers=self.layers, cache=cache, logits=t < T - 1)
            steps.append(out.hidden[:, :, 0].float().cpu())
        stacked = torch.stack(steps, dim=2).numpy()  # (B, L, S, H)
        eos_cut = eos if self.stop_at_eos else set()
        return [cut_generated(stacked[b], g, tokens=T, eos=eos_cut) for b, g in enumerate(generated)]

    def _teacher_forced(
        self, queries: list[Query], prompts: list[list[int]], visual: torch.Tensor
    ) -> list[CapturedLatents]:
        """One pass over prompt + answer per sample, right-padded (causal: no kept position sees padding)."""
        fulls = [self._tokenizer.encode(self._render(q) + q.answer, bos=True, eos=False) for q in queries]
        # Kept: the last prompt token (of the prompt encoded alone) and up to T-1 tokens after it.
        spans = [
            (len(p) - 1, min(len(f), len(p) + self.tokens - 1)) for p, f in zip(prompts, fulls, strict=True)
        ]
        tokens, positions = self._right_padded([f[:end] for f, (_, end) in zip(fulls, spans, strict=True)])
        read = torch.zeros((len(queries), self.tokens), dtype=torch.long)
        for b, (start, end) in enumerate(spans):
            kept = torch.arange(start, end)
            read[b, : len(kept)] = kept
            read[b, len(kept) :] = kept[-1]  # padding repeats the last kept position
        out = self.gm.model(
            TokenBatch(tokens, positions, read.to(self._device)), visual, layers=self.layers, logits=False
        )
        hidden = out.hidden.float().cpu().numpy()  # (B, L, T, H)
        return [
            forced_latents(hidden[b], fulls[b][start + 1 : end], tokens=self.tokens)
            for b, (start, end) in enumerate(spans)
        ]
