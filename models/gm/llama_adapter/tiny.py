"""A tiny random-weight LLaMA-Adapter V2 in exactly the released file formats, for tests and the embedded
pipeline: `build_tiny_gm(out, arch="llama-adapter")` (`netroller.models.gm.tiny`) writes

    params.json           Meta's keys, vocab_size -1 (the tokenizer's size is used)
    consolidated.00.pth   LLaMA's tensors by Meta's names, float16 (and Meta's unused rope.freqs)
    tokenizer.model       a sentencepiece BPE model trained here on the tiny GMs' driving corpus, LLaMA's
                          settings (byte fallback, BOS 1, EOS 2, no pad piece)
    llama_adapter.pth     {"model": ..., "config": {"w_bias": True, ...}}: the keys of the released BIAS-7B
                          checkpoint (visual branch, adapter queries, gates, biases, norms)
    clip.pt               OpenAI CLIP's state dict (vision and text towers), float16 but the LayerNorms, which
                          OpenAI's loader and this backend both read; `clip_torchscript=True` writes it as a
                          TorchScript archive like OpenAI's ViT-L-14.pt instead (not byte-reproducible:
                          TorchScript archives carry a random id)

Every value is a float16 number, so the authors' code (which holds LLaMA in float16) and this backend see
identical weights. Sizes: LLaMA dim 64, 4 blocks, the top 3 reading 4 adapter queries; CLIP width 128,
2 blocks, 32 px patches at 224 px (CLIP's LayerNorms in float32, as OpenAI's file). As the tiny HF GMs: large-std weights so that greedy answers depend on
the images and the question, and a scaled EOS row so that some answers stop early.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from netroller.errors import ConfigError
from netroller.models.gm.llama_adapter.clip import ClipVision, LayerNorm, _ResidualBlock
from netroller.models.gm.llama_adapter.config import VISUAL_HEADS, ClipParams, LlamaParams
from netroller.models.gm.llama_adapter.files import PARAMS_FILE, TOKENIZER_FILE

ADAPTER_FILE = "llama_adapter.pth"
CLIP_FILE = "clip.pt"
SHARD_FILE = "consolidated.00.pth"
BUILT_FILES = (PARAMS_FILE, SHARD_FILE, TOKENIZER_FILE, ADAPTER_FILE, CLIP_FILE)
# Lines added to the shared corpus: prompt markup and digits (DriveLM's object tags carry coordinates).
_EXTRA_CORPUS = (
    "### Instruction:\n<image>\nWhat should the ego vehicle do next?\n\n### Response:",
    "<c1,CAM_FRONT,800.5,450.2> <c2,CAM_BACK,1088.3,497.5> 0 1 2 3 4 5 6 7 8 9",
)


@dataclass(frozen=True, kw_only=True)
class TinyAdapterSpec:
    """Sizes of the tiny LLaMA-Adapter; the defaults are what `build_tiny_gm(arch="llama-adapter")` builds."""

    dim: int = 64
    n_layers: int = 4
    n_heads: int = 4
    multiple_of: int = 32
    vocab_size: int = 512
    """Sentencepiece vocabulary (>= 300: 256 byte pieces, specials and a few merges)."""
    query_len: int = 4
    query_layers: int = 3
    """The top blocks that read adapter queries (<= n_layers)."""
    visual_dim: int = 64
    """Width of the visual blocks; a multiple of their 16 heads."""
    visual_depth: int = 2
    clip_width: int = 128
    clip_layers: int = 2
    clip_patch: int = 32
    clip_output: int = 64
    init_std: float = 0.1
    """Std of LLaMA's matrices."""
    output_std: float = 0.4
    """Std of the LM head; large so that greedy decoding depends on its input."""
    eos_logit_scale: float = 1.6
    """Factor on the LM head's EOS row, so that decoding stops early on some inputs."""
    gate_std: float = 1.0
    """Std of the adapter gates (tanh(gate) weighs the images in)."""
    clip_torchscript: bool = False

    def __post_init__(self) -> None:
        for name in (
            "dim",
            "n_layers",
            "n_heads",
            "query_len",
            "query_layers",
            "visual_depth",
            "clip_layers",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"TinyAdapterSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.query_layers > self.n_layers:
            raise ConfigError(
                f"TinyAdapterSpec.query_layers={self.query_layers} must be <= n_layers={self.n_layers}"
            )
        if self.visual_dim % VISUAL_HEADS:
            raise ConfigError(f"TinyAdapterSpec.visual_dim must be a multiple of {VISUAL_HEADS}")
        if 224 % self.clip_patch:
            raise ConfigError(f"TinyAdapterSpec.clip_patch={self.clip_patch} must divide 224")
        if self.vocab_size < 300:
            raise ConfigError(f"TinyAdapterSpec.vocab_size must be >= 300, got {self.vocab_size}")


def build_adapter_into(folder: Path, *, seed: int, spec: TinyAdapterSpec) -> None:
    """Write the five files into `folder` (empty); deterministic for a seed and spec."""
    tokenizer = train_sentencepiece(spec.vocab_size)
    (folder / TOKENIZER_FILE).write_bytes(tokenizer)
    params = {"dim": spec.dim, "multiple_of": spec.multiple_of, "n_heads": spec.n_heads}
    params |= {"n_layers": spec.n_layers, "norm_eps": 1e-05, "vocab_size": -1}
    (folder / PARAMS_FILE).write_text(json.dumps(params) + "\n")
    llama = LlamaParams(**{**params, "vocab_size": _vocab(tokenizer)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.save(_llama_tensors(llama, spec), folder / SHARD_FILE)
        torch.save(_adapter_checkpoint(llama, spec), folder / ADAPTER_FILE)
        clip = _clip_module(spec)
        if spec.clip_torchscript:
            # Traced on a float16 image; only the archive's tensors and names are read back.
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", DeprecationWarning
                )  # TorchScript is deprecated; OpenAI's is one
                example = torch.zeros(1, 3, 224, 224, dtype=torch.float16)
                torch.jit.trace(clip, example, check_trace=False).save(str(folder / CLIP_FILE))
        else:
            torch.save(clip.state_dict(), folder / CLIP_FILE)


def corpus() -> list[str]:
    from netroller.models.gm.tiny import corpus_lines

    return [*corpus_lines(), *_EXTRA_CORPUS]


def train_sentencepiece(vocab_size: int) -> bytes:
    """A sentencepiece BPE model (bytes of tokenizer.model) with LLaMA's settings, on `corpus()`."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def _vocab(model: bytes) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=model).vocab_size()


def _half(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
    return (torch.randn(shape) * std + mean).half()


def _llama_tensors(p: LlamaParams, spec: TinyAdapterSpec) -> dict[str, torch.Tensor]:
    std, ffn = spec.init_std, p.ffn_dim
    out = {"tok_embeddings.weight": _half(p.vocab_size, p.dim, std=1.0)}
    for i in range(p.n_layers):
        for name in ("wq", "wk", "wv", "wo"):
            out[f"layers.{i}.attention.{name}.weight"] = _half(p.dim, p.dim, std=std)
        out[f"layers.{i}.feed_forward.w1.weight"] = _half(ffn, p.dim, std=std)
        out[f"layers.{i}.feed_forward.w2.weight"] = _half(p.dim, ffn, std=std)
        out[f"layers.{i}.feed_forward.w3.weight"] = _half(ffn, p.dim, std=std)
        out[f"layers.{i}.attention_norm.weight"] = _half(p.dim, std=0.1, mean=1.0)
        out[f"layers.{i}.ffn_norm.weight"] = _half(p.dim, std=0.1, mean=1.0)
    out["norm.weight"] = _half(p.dim, std=0.1, mean=1.0)
    output = torch.randn(p.vocab_size, p.dim) * spec.output_std
    output[2] *= spec.eos_logit_scale  # EOS (id 2)
    out["output.weight"] = output.half()
    out["rope.freqs"] = (1.0 / 10000.0 ** (torch.arange(0, p.head_dim, 2).float() / p.head_dim)).half()
    return out


def _adapter_checkpoint(p: LlamaParams, spec: TinyAdapterSpec) -> dict:
    """The BIAS-7B checkpoint's keys; float32 tensors holding float16 values, the gates in float16."""
    v, hidden = spec.visual_dim, 4 * spec.visual_dim
    model: dict[str, torch.Tensor] = {}

    def linear(name: str, n_out: int, n_in: int, std: float) -> None:
        model[f"{name}.weight"] = _half(n_out, n_in, std=std).float()
        model[f"{name}.bias"] = _half(n_out, std=0.05).float()

    def norm(name: str, n: int) -> None:
        model[f"{name}.weight"] = _half(n, std=0.05, mean=1.0).float()
        model[f"{name}.bias"] = _half(n, std=0.05).float()

    for i in range(spec.visual_depth):
        norm(f"visual_blocks.{i}.norm1", v)
        linear(f"visual_blocks.{i}.attn.qkv", 3 * v, v, 0.1)
        linear(f"visual_blocks.{i}.attn.proj", v, v, 0.1)
        norm(f"visual_blocks.{i}.norm2", v)
        linear(f"visual_blocks.{i}.mlp.fc1", hidden, v, 0.1)
        linear(f"visual_blocks.{i}.mlp.fc2", v, hidden, 0.1)
    ffn = p.ffn_dim
    for i in range(p.n_layers):
        prefix = f"llama.layers.{i}"
        model[f"{prefix}.attention.gate"] = _half(1, p.n_heads, 1, 1, std=spec.gate_std)
        model[f"{prefix}.attention.wq.bias"] = _half(p.dim, std=0.1).float()
        model[f"{prefix}.attention.wo.bias"] = _half(p.dim, std=0.1).float()
        model[f"{prefix}.feed_forward.w1.bias"] = _half(ffn, std=0.1).float()
        model[f"{prefix}.feed_forward.w2.bias"] = _half(p.dim, std=0.1).float()
        model[f"{prefix}.feed_forward.w3.bias"] = _half(ffn, std=0.1).float()
        model[f"{prefix}.attention_norm.weight"] = _half(p.dim, std=0.1, mean=1.0).float()
        model[f"{prefix}.ffn_norm.weight"] = _half(p.dim, std=0.1, mean=1.0).float()
    norm("clip_proj_norm", v)
    norm("visual_proj_norm", p.dim)
    linear("visual_proj", p.dim, v, 0.2)
    linear("clip_proj", v, spec.clip_output, 0.2)
    model["llama.norm.weight"] = _half(p.dim, std=0.1, mean=1.0).float()
    model["visual_query.weight"] = _half(spec.query_len, v, std=1.0).float()
    model["adapter_query.weight"] = _half(spec.query_len * spec.query_layers, p.dim, std=1.0).float()
    return {"model": model, "config": {"w_bias": True, "w_lora": False, "lora_rank": 16}}


class _ClipFile(nn.Module):
    """OpenAI CLIP's module tree (the names of its state dict), with a tiny text tower beside the vision one."""

    def __init__(self, vision: ClipParams, text_width: int = 64, context: int = 8, vocab: int = 64) -> None:
        super().__init__()
        self.visual = ClipVision(vision)
        self.token_embedding = nn.Embedding(vocab, text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(context, text_width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([_ResidualBlock(text_width, 1)])
        self.ln_final = LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.zeros(text_width, vision.output_dim))
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


def _clip_module(spec: TinyAdapterSpec) -> _ClipFile:
    vision = ClipParams(
        width=spec.clip_width,
        layers=spec.clip_layers,
        patch_size=spec.clip_patch,
        grid=224 // spec.clip_patch,
        output_dim=spec.clip_output,
    )
    module = _ClipFile(vision)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith(
                ("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")
            ):
                param.copy_(1.0 + 0.05 * torch.randn(param.shape))
            elif name in ("visual.class_embedding", "visual.positional_embedding", "visual.proj"):
                param.copy_(torch.randn(param.shape) * spec.clip_width**-0.5)
            elif name == "visual.conv1.weight":
                param.copy_(torch.randn(param.shape) * 0.02)
            else:
                param.copy_(torch.randn(param.shape) * 0.05)
    module = module.half().eval()
    for sub in module.modules():  # OpenAI's file keeps its LayerNorms in float32
        if isinstance(sub, LayerNorm):
            sub.float()
    return module
