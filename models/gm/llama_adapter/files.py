"""The released files of a LLaMA-Adapter V2 model, found in one folder, checked against each other, and read.

Layout (the files as released, side by side; symlinks are fine):

    DIR/
      params.json            LLaMA-2's config (Meta's download: llama-2-7b/params.json)
      consolidated.00.pth    LLaMA-2's weights; several shards (consolidated.01.pth, ...) are fairscale
                             model-parallel slices and are joined
      tokenizer.model        LLaMA's sentencepiece tokenizer
      <name>.pth             the LLaMA-Adapter checkpoint: any other .pth, {"model": state dict, ...}; the
                             released BIAS-7B.pth (adapter, visual branch, bias / norm / gate weights) or a
                             fine-tune's full checkpoint-N.pth (DriveLM's), whose tensors replace LLaMA's
      <name>.pt              OpenAI CLIP (ViT-L-14.pt as `clip` downloads it: a TorchScript archive, or a plain
                             state dict)

As the authors' loader does: LLaMA's tensors first, then every tensor of the adapter checkpoint over them
(its `clip.visual.*` over the CLIP file's); biases and gates it lacks stay zero, the visual branch and the
adapter queries must be there. LoRA checkpoints (LORA-BIAS-7B) are refused: not implemented here.
`read_shapes` checks shapes only (tensors memory-mapped, nothing read), for the harvest's driver.
"""

from __future__ import annotations

import argparse
import json
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from netroller.errors import ModelError
from netroller.models.gm.llama_adapter.config import ClipParams, LlamaParams, VisualParams

PARAMS_FILE = "params.json"
TOKENIZER_FILE = "tokenizer.model"
_SHARD = re.compile(r"consolidated\.(\d+)\.pth")
# params.json keys the authors' ModelArgs reads; max_* only size their caches.
_PARAM_KEYS = {"dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "norm_eps"}
_IGNORED_PARAM_KEYS = {"max_batch_size", "max_seq_len"}
# How fairscale splits each LLaMA weight across model-parallel shards: the dim the slices are joined on.
_COLUMN_PARALLEL = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight")
_COLUMN_PARALLEL += ("feed_forward.w1.weight", "feed_forward.w3.weight", "output.weight")
_ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight", "tok_embeddings.weight")
# The visual branch and the adapter queries: what an adapter checkpoint must hold.
_VISUAL_MODULES = ("clip_proj", "clip_proj_norm", "visual_proj", "visual_proj_norm")


@dataclass(frozen=True)
class AdapterFiles:
    """The files of one model folder."""

    folder: Path
    params: Path
    shards: tuple[Path, ...]
    tokenizer: Path
    adapter: Path
    clip: Path

    @classmethod
    def find(cls, folder: Path) -> AdapterFiles:
        """The folder's files by the layout above; ModelError naming what is missing or ambiguous."""
        folder = Path(folder)
        where = f"LLaMA-Adapter folder {folder}"
        for name in (PARAMS_FILE, TOKENIZER_FILE):
            if not (folder / name).is_file():
                raise ModelError(f"{where}: {name} is missing")
        shards = sorted(
            (p for p in folder.glob("consolidated.*.pth") if _SHARD.fullmatch(p.name)),
            key=lambda p: int(_SHARD.fullmatch(p.name).group(1)),
        )
        if not shards:
            raise ModelError(f"{where}: consolidated.00.pth (LLaMA-2's weights) is missing")
        numbers = [int(_SHARD.fullmatch(p.name).group(1)) for p in shards]
        if numbers != list(range(len(shards))):
            raise ModelError(f"{where}: the LLaMA shards are not numbered 00..{len(shards) - 1}: {numbers}")
        adapters = sorted(p for p in folder.glob("*.pth") if not _SHARD.fullmatch(p.name))
        clips = sorted(folder.glob("*.pt"))
        for found, what, example in (
            (adapters, "LLaMA-Adapter checkpoint", "BIAS-7B.pth"),
            (clips, "CLIP file", "ViT-L-14.pt"),
        ):
            if not found:
                raise ModelError(
                    f"{where}: the {what} (a .{example.split('.')[-1]} such as {example}) is missing"
                )
            if len(found) > 1:
                names = ", ".join(p.name for p in found)
                raise ModelError(f"{where}: more than one {what}: {names}; keep one")
        return cls(
            folder, folder / PARAMS_FILE, tuple(shards), folder / TOKENIZER_FILE, adapters[0], clips[0]
        )

    @property
    def weight_files(self) -> list[Path]:
        """What the model hash covers."""
        return [self.params, *self.shards, self.adapter, self.clip]


def read_params(path: Path, vocab_size: int) -> LlamaParams:
    """`params.json` with `vocab_size` -1 taken from the tokenizer; ModelError for what the authors' model
    cannot express (grouped-query attention, a custom feed-forward multiplier)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("n_kv_heads") not in (None, raw.get("n_heads")):
        raise ModelError(
            f"{path}: n_kv_heads={raw['n_kv_heads']} (grouped-query attention, LLaMA-2-70B) is not supported: "
            "LLaMA-Adapter V2 is built on LLaMA-2-7B / 13B"
        )
    unknown = sorted(set(raw) - _PARAM_KEYS - _IGNORED_PARAM_KEYS - {"n_kv_heads"})
    if unknown:
        raise ModelError(
            f"{path}: unsupported key {unknown[0]!r} (LLaMA-Adapter V2 reads {sorted(_PARAM_KEYS)})"
        )
    missing = sorted({"dim", "n_layers", "n_heads"} - set(raw))
    if missing:
        raise ModelError(f"{path}: missing key {missing[0]!r}")
    fields = {k: raw[k] for k in _PARAM_KEYS if k in raw}
    if fields.get("vocab_size", -1) == -1:
        fields["vocab_size"] = vocab_size
    elif fields["vocab_size"] != vocab_size:
        raise ModelError(
            f"{path}: vocab_size {fields['vocab_size']} but the tokenizer has {vocab_size} pieces"
        )
    return LlamaParams(**fields)


def load_tensors(path: Path, what: str) -> dict:
    """A torch checkpoint memory-mapped (tensors are read when touched), without running pickled code; a
    training checkpoint's argparse Namespace is allowed. ModelError naming the file."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # pre-zip format
    except Exception as err:  # unpickling raises many types; one line for the user
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"{path}: cannot read the {what} ({reason})") from err
    if not isinstance(obj, Mapping):
        raise ModelError(f"{path}: the {what} is a {type(obj).__name__}, expected a dict of tensors")
    return dict(obj)


def llama_state(files: AdapterFiles, *, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """LLaMA's tensors by Meta's names, the model-parallel shards joined (`shapes_only`: joined as meta
    tensors, so that no byte of a shard is read)."""
    shards = [load_tensors(p, "LLaMA checkpoint") for p in files.shards]
    if len(shards) == 1:
        return {k: v for k, v in shards[0].items() if k != "rope.freqs"}
    joined = {}
    for name in shards[0]:
        if name == "rope.freqs":
            continue
        parts = []
        for path, shard in zip(files.shards, shards, strict=True):
            if name not in shard:
                raise ModelError(f"{path}: tensor {name!r} is missing (present in {files.shards[0].name})")
            parts.append(shard[name])
        if shapes_only:
            parts = [torch.empty(p.shape, dtype=p.dtype, device="meta") for p in parts]
        if name.endswith(_COLUMN_PARALLEL):
            joined[name] = torch.cat(parts, dim=0)
        elif name.endswith(_ROW_PARALLEL):
            joined[name] = torch.cat(parts, dim=1)
        else:  # norms: replicated
            joined[name] = parts[0]
    return joined


def adapter_state(files: AdapterFiles) -> dict[str, torch.Tensor]:
    """The adapter checkpoint's tensors by the authors' names ("llma." of older checkpoints read "llama.")."""
    raw = load_tensors(files.adapter, "LLaMA-Adapter checkpoint")
    config = raw.get("config") if isinstance(raw.get("config"), Mapping) else {}
    state = raw.get("model", raw)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(
            f"{files.adapter}: no state dict of tensors (under 'model') in the LLaMA-Adapter checkpoint"
        )
    state = {(("llama." + k[5:]) if k.startswith("llma.") else k): v for k, v in state.items()}
    lora = next((k for k in state if ".lora_" in k or k.endswith("new_gate")), None)
    if config.get("w_lora") or lora is not None:
        raise ModelError(
            f"{files.adapter}: a LoRA LLaMA-Adapter checkpoint ({lora or 'config w_lora'}) is not supported; "
            "use a bias-tuned one (BIAS-7B, DriveLM's fine-tune)"
        )
    return state


def clip_state(files: AdapterFiles) -> dict[str, torch.Tensor]:
    """The `visual.*` tensors of the CLIP file, a TorchScript archive (OpenAI's download) or a state dict."""
    path = files.clip
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            scripted = any(n.endswith("constants.pkl") for n in archive.namelist())
        if scripted:
            try:
                with warnings.catch_warnings():  # TorchScript is deprecated; OpenAI's file is one
                    warnings.simplefilter("ignore", DeprecationWarning)
                    state = torch.jit.load(str(path), map_location="cpu").state_dict()
            except Exception as err:  # a broken archive: one line
                raise ModelError(f"{path}: cannot read the CLIP TorchScript archive ({err})") from err
        else:
            state = load_tensors(path, "CLIP state dict")
    else:
        state = load_tensors(path, "CLIP state dict")
    visual = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    if "conv1.weight" not in visual or "proj" not in visual:
        raise ModelError(f"{path}: not an OpenAI CLIP ViT checkpoint (no visual.conv1.weight / visual.proj)")
    return visual


def clip_params(visual: Mapping[str, torch.Tensor], path: Path) -> ClipParams:
    """The tower's size from its shapes, as OpenAI's `build_model` reads them."""
    conv = visual["conv1.weight"]
    layers = len({k.split(".")[2] for k in visual if k.startswith("transformer.resblocks.")})
    n_pos = visual["positional_embedding"].shape[0]
    grid = round((n_pos - 1) ** 0.5)
    if grid * grid + 1 != n_pos:
        raise ModelError(f"{path}: visual.positional_embedding has {n_pos} rows, not a square grid + 1")
    return ClipParams(
        width=conv.shape[0],
        layers=layers,
        patch_size=conv.shape[-1],
        grid=grid,
        output_dim=visual["proj"].shape[1],
    )


def visual_params(state: Mapping[str, torch.Tensor], llama: LlamaParams, files: AdapterFiles) -> VisualParams:
    """The visual branch's size from the adapter checkpoint's shapes, checked against `params.json`."""
    where = files.adapter
    needed = ["visual_query.weight", "adapter_query.weight"]
    needed += [f"{m}.{s}" for m in _VISUAL_MODULES for s in ("weight", "bias")]
    missing = [k for k in needed if k not in state]
    if missing:
        raise ModelError(
            f"{where}: the LLaMA-Adapter checkpoint has no {missing[0]!r} (not a LLaMA-Adapter V2 multimodal checkpoint?)"
        )
    query_len, embed_dim = state["visual_query.weight"].shape
    rows, width = state["adapter_query.weight"].shape
    if width != llama.dim:
        raise ModelError(
            f"{where}: adapter queries of width {width}, but {files.params.name} gives LLaMA dim {llama.dim} "
            "(an adapter for another LLaMA size)"
        )
    if rows % query_len:
        raise ModelError(
            f"{where}: adapter_query has {rows} rows, not a multiple of the query length {query_len} "
            "(visual_query)"
        )
    query_layers = rows // query_len
    if query_layers > llama.n_layers:
        raise ModelError(
            f"{where}: adapter queries for {query_layers} layers (query length {query_len}), but "
            f"{files.params.name} gives {llama.n_layers} layers"
        )
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(r"llama\.layers\.(\d+)\.", k))}
    if layer_ids and max(layer_ids) >= llama.n_layers:
        raise ModelError(
            f"{where}: tensors for layer {max(layer_ids)}, but {files.params.name} gives {llama.n_layers} layers"
        )
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"visual_blocks\.(\d+)\.", k))})
    if depth == 0:
        raise ModelError(f"{where}: the LLaMA-Adapter checkpoint has no visual_blocks")
    return VisualParams(
        clip_dim=state["clip_proj.weight"].shape[1],
        embed_dim=embed_dim,
        depth=depth,
        mlp_dim=state["visual_blocks.0.mlp.fc1.weight"].shape[0],
        query_len=query_len,
        query_layers=query_layers,
    )


def check_llama(state: Mapping[str, torch.Tensor], params: LlamaParams, files: AdapterFiles) -> None:
    """The LLaMA checkpoint is the size `params.json` describes; ModelError naming the files otherwise."""
    shard = (
        files.shards[0].name if len(files.shards) == 1 else f"{files.shards[0].name}..{files.shards[-1].name}"
    )
    where = f"{files.folder / shard}"
    emb = state.get("tok_embeddings.weight")
    if emb is None:
        raise ModelError(f"{where}: no tok_embeddings.weight (not a LLaMA checkpoint?)")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    found = (emb.shape[1], len(layers))
    wanted = (params.dim, params.n_layers)
    if found != wanted:
        raise ModelError(
            f"{where}: a LLaMA of dim {found[0]} with {found[1]} layers, but {files.params.name} gives dim "
            f"{wanted[0]} with {wanted[1]} layers (a checkpoint for another LLaMA size?)"
        )
    if emb.shape[0] != params.vocab_size:
        raise ModelError(
            f"{where}: a vocabulary of {emb.shape[0]} tokens, but {files.tokenizer.name} has {params.vocab_size}"
        )
    ffn = state.get("layers.0.feed_forward.w1.weight")
    if ffn is not None and ffn.shape[0] != params.ffn_dim:
        raise ModelError(
            f"{where}: feed-forward width {ffn.shape[0]}, but {files.params.name} (dim {params.dim}, multiple_of "
            f"{params.multiple_of}) gives {params.ffn_dim}"
        )


@dataclass(frozen=True)
class ModelShapes:
    """Everything that sizes the model, read from the files' shapes."""

    llama: LlamaParams
    visual: VisualParams


def read_shapes(files: AdapterFiles, vocab_size: int) -> ModelShapes:
    """Check the LLaMA and adapter checkpoints against params.json (shapes only)."""
    params = read_params(files.params, vocab_size)
    check_llama(llama_state(files, shapes_only=True), params, files)
    return ModelShapes(llama=params, visual=visual_params(adapter_state(files), params, files))
