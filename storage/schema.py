"""The latent cache's self-description: the cache key (provenance), the layout, manifest rows and commit records.

Plain data, no I/O. `LatentKey` is the part of a `CacheKey` that decides what one sample's latents are (GM,
processor, prompts, T, H, dtype, layers, how the GM computed and answered): a run records it, and its one
comparison, `LatentKey.mismatch` (raised as an error by `LatentKey.check`), is what train, eval, resume,
`CacheReader(expect=)` and the writer resuming a cache use (the writer with the same layers, and the other
`CacheKey` fields equal). The format version travels in every file the cache writes, and readers refuse
versions they do not know.

Files under a cache root:

    cache.json          {"format_version", "key": CacheKey, "layout": CacheLayout}
    latents.zarr/       Zarr v3 group: hidden [N, L, T, H], length [N], token_ids [N, max(T-1, 1)]
    manifest.parquet    sample_token, row, shard, scene_token, frame_index, timestamp
    commits/NNNNNN.json one CommitRecord per finished shard, written last, by rename
    failures.parquet    sample_token, shard, reason (rebuilt from the commit records by finalize)
    .lock               pid + host of the process writing the cache
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from netroller.errors import CacheError, CacheKeyMismatchError, ConfigError

CACHE_FORMAT_VERSION = 3
# Format 1 had no per-sample checksums (no crc32c codec in the inner chunks), format 2 no record of how the GM
# computed (compute dtype, attention, generated or teacher-forced, decoding); both are refused with this advice.
MIGRATE_ADVICE = (
    "rebuild it: run the same `netroller harvest` command with --overwrite (or with a new --out); "
    "the old cache cannot be read by this version"
)

CACHE_JSON = "cache.json"
ZARR_DIR = "latents.zarr"
MANIFEST_FILE = "manifest.parquet"
COMMITS_DIR = "commits"
FAILURES_FILE = "failures.parquet"
LOCK_FILE = ".lock"

HIDDEN = "hidden"
LENGTH = "length"
TOKEN_IDS = "token_ids"
ARRAY_NAMES = (HIDDEN, LENGTH, TOKEN_IDS)

LatentDType = Literal["float16", "float32", "bfloat16"]
LATENT_DTYPES: tuple[str, ...] = get_args(LatentDType)
# numpy has no bfloat16: its bits are stored as uint16 and the cache records the logical dtype.
STORAGE_DTYPE = {"float16": "float16", "float32": "float32", "bfloat16": "uint16"}


def commit_name(shard: int) -> str:
    """File name of a shard's commit record under `commits/`."""
    return f"{shard:06d}.json"


LatentKind = Literal["generated", "teacher-forced"]
LATENT_KINDS: tuple[str, ...] = get_args(LatentKind)
QuestionMode = Literal["one", "per-category", "all"]
QUESTION_MODES: tuple[str, ...] = get_args(QuestionMode)

LATENT_KEY_FIELDS = (
    "backend",
    "model",
    "model_hash",
    "processor_hash",
    "prompt_hash",
    "tokens",
    "hidden_size",
    "dtype",
    "layers",
    "compute_dtype",
    "attn_implementation",
    "latents",
    "decode",
    "questions",
)
# What the code did before these fields were recorded (runs trained with such code carry keys without them).
_LATENT_KEY_DEFAULTS = {
    "backend": "hf",
    "compute_dtype": "float32",
    "attn_implementation": "sdpa",
    "latents": "generated",
    "decode": "greedy",
    "questions": "one",
}
# The one allowed difference between a run's key and the latents it is evaluated on (the authors' setting):
# trained on teacher-forced latents, evaluated on latents the same GM generated from the same prompts.
TEACHER_FORCED_ON_GENERATED = "trained on teacher-forced latents, evaluated on generated latents"


@dataclass(frozen=True, kw_only=True)
class LatentKey:
    """What decides one sample's latents: recorded by a run (netroller.json) and checked against the latents
    it is fed (a cache or the online GM). A harvest builds one from its GM and wraps it in the cache key
    (`CacheKey.for_latents`); the online path builds one from its GM the same way (both name the GM by
    `LoadedGM.name`); `CacheKey.latent_key` gives it back from a cache."""

    model: str
    """The GM's name (hub id or folder name); reported in messages. The weights' identity is `model_hash`."""
    model_hash: str
    """Hash of the model weights."""
    processor_hash: str
    """Hash of the processor/tokenizer files."""
    prompt_hash: str
    """Hash of the prompt template(s) or question file."""
    tokens: int
    """T: positions per sample."""
    hidden_size: int
    """H: width of the residual stream."""
    dtype: LatentDType
    """Precision of the latents."""
    layers: tuple[int, ...]
    """Absolute decoder-layer indices: the ones a run is fed, or the ones latents hold."""
    compute_dtype: str
    """Precision the GM computed in ("bfloat16" on GPUs, "float32" on CPUs)."""
    attn_implementation: str
    """The GM's attention kernel ("sdpa", "eager", "flash_attention_2")."""
    latents: LatentKind
    """"generated": the GM answered by itself; "teacher-forced": it read the ground-truth answer."""
    decode: str
    """How answers were generated ("greedy", "sample(temperature=0.1,top_p=0.75,seed=0)"); "none" when
    teacher-forced."""
    questions: QuestionMode
    """Which DriveLM questions each sample was asked, one row each: "one", "per-category" or "all"."""
    backend: str = "hf"
    """The code that ran the GM: "hf" (Hugging Face transformers) or "llama-adapter" (LLaMA-Adapter V2's
    released files)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if self.latents not in LATENT_KINDS:
            raise ConfigError(f"latents must be one of {', '.join(LATENT_KINDS)}, got {self.latents!r}")
        if self.questions not in QUESTION_MODES:
            raise ConfigError(f"questions must be one of {', '.join(QUESTION_MODES)}, got {self.questions!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def of_gm(
        cls,
        gm: Any,
        *,
        prompt_hash: str,
        tokens: int,
        dtype: str,
        layers: Sequence[int],
        latents: str,
        decode: str,
        questions: str,
    ) -> LatentKey:
        """The key of latents a GM (`netroller.models.gm.loader.GMInfo`: its name, weight and processor
        hashes, width, compute dtype and attention) makes from these prompts, positions, dtype and layers;
        what a harvest records and an online run compares."""
        return cls(
            backend=gm.backend,
            model=gm.name,
            model_hash=gm.model_hash,
            processor_hash=gm.processor_hash,
            prompt_hash=prompt_hash,
            tokens=tokens,
            hidden_size=gm.hidden_size,
            dtype=dtype,
            layers=tuple(layers),
            compute_dtype=gm.compute_dtype,
            attn_implementation=gm.attn_implementation,
            latents=latents,
            decode=decode,
            questions=questions,
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatentKey:
        """Parse a recorded key (netroller.json's `latents_key`); CacheError naming a missing field."""
        if not isinstance(d, Mapping):
            raise CacheError(f"latent key must be a JSON object, got {type(d).__name__}")
        d = {**_LATENT_KEY_DEFAULTS, **d}
        missing = [name for name in LATENT_KEY_FIELDS if name not in d]
        if missing:
            raise CacheError(f"latent key is missing field {missing[0]!r}")
        try:
            return cls(**{name: d[name] for name in LATENT_KEY_FIELDS})
        except ConfigError as err:
            raise CacheError(f"latent key is invalid: {err}") from err

    def mismatch(
        self, latents: LatentKey, *, evaluating: bool = False, same_layers: bool = False
    ) -> tuple[str, Any, Any] | None:
        """The first field on which `latents` are not what this key was recorded for, as (field, this key's
        value, the latents' value); None when they are. `model` (a name, which may be a hub id, a folder name
        or, in runs recorded before names were unified, the path as typed) is not compared: the weights are
        identified by `model_hash`. The latents may hold more layers than this key uses, unless
        `same_layers` (a cache a harvest resumes must hold exactly the harvest's layers). `evaluating=True`
        allows the authors' pairing (see `check`)."""
        pairing = evaluating and self.latents == "teacher-forced" and latents.latents == "generated"
        for name in LATENT_KEY_FIELDS:
            if name == "model" or (pairing and name in ("latents", "decode")):
                continue
            mine, theirs = getattr(self, name), getattr(latents, name)
            if name == "layers" and not same_layers:
                if not set(mine) <= set(theirs):
                    return name, mine, theirs
            elif mine != theirs:
                return name, mine, theirs
        return None

    def check(self, latents: LatentKey, *, where: str, evaluating: bool = False) -> str | None:
        """Refuse `latents` unless they are what this key was recorded for (`mismatch`): CacheKeyMismatchError
        naming the first differing field.

        `evaluating=True` allows the authors' pairing: a key recorded on teacher-forced latents accepts
        generated latents of the same GM, prompts, layers and positions (then `latents` and `decode`
        differ); the pairing's description (`TEACHER_FORCED_ON_GENERATED`) is returned, else None."""
        found = self.mismatch(latents, evaluating=evaluating)
        if found is not None:
            name, mine, theirs = found
            if name == "layers":
                raise CacheKeyMismatchError(
                    f"{where}: layers: the run was trained on GM layers {list(mine)}, "
                    f"the latents hold {list(theirs)}"
                )
            extra = f" (GM {self.model!r} vs {latents.model!r})" if name == "model_hash" else ""
            raise CacheKeyMismatchError(
                f"{where}: {name}: the run was trained with {mine!r}, the latents have {theirs!r}{extra}"
            )
        pairing = evaluating and self.latents == "teacher-forced" and latents.latents == "generated"
        return TEACHER_FORCED_ON_GENERATED if pairing else None


@dataclass(frozen=True, kw_only=True)
class CacheKey:
    """Everything that decides what the cached latents are; stored in cache.json and compared on open."""

    model: str
    """Model path or hub id the latents come from."""
    model_hash: str
    """Hash of the model weights."""
    model_stand_in: bool = False
    """The GM is NetRoller's embedded random-weight stand-in (reports say so)."""
    processor_hash: str
    """Hash of the processor/tokenizer files."""
    prompt_hash: str
    """Hash of the prompt template(s) or question file."""
    layers: tuple[int, ...]
    """Absolute decoder-layer indices captured, strictly ascending."""
    num_model_layers: int
    """Decoder layers the model has (so `layers` can be read as "all" or a subset)."""
    tokens: int
    """T: positions per sample (last prompt token + up to T-1 generated tokens)."""
    hidden_size: int
    """H: width of the residual stream."""
    dtype: LatentDType = "float16"
    """Stored precision; bfloat16 is kept as uint16 bits."""
    compute_dtype: str
    """Precision the GM computed in."""
    attn_implementation: str
    """The GM's attention kernel."""
    latents: LatentKind
    """"generated" or "teacher-forced" (see `LatentKey.latents`)."""
    decode: str
    """How answers were generated (see `LatentKey.decode`)."""
    questions: QuestionMode
    """Which questions each sample was asked (see `LatentKey.questions`)."""
    backend: str = "hf"
    """The code that ran the GM (see `LatentKey.backend`); caches written before it was recorded are "hf"."""
    dataset_version: str
    """nuScenes version, e.g. "v1.0-mini"."""
    splits: tuple[str, ...]
    """Splits whose samples the cache holds."""
    index_hash: str
    """Hash of the sample-index file the manifest was built from."""
    code_version: str
    """Version of the harvesting code."""
    format_version: int = CACHE_FORMAT_VERSION
    """On-disk format; readers refuse any other."""

    def __post_init__(self) -> None:
        # Lists (from JSON or a caller) become tuples, so keys compare and hash by value.
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "splits", tuple(str(x) for x in self.splits))
        for name in (
            "model",
            "model_hash",
            "processor_hash",
            "prompt_hash",
            "dataset_version",
            "index_hash",
            "compute_dtype",
            "attn_implementation",
            "decode",
            "backend",
        ):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"CacheKey.{name} must be a non-empty string, got {getattr(self, name)!r}")
        if not isinstance(self.code_version, str):
            raise ConfigError(f"CacheKey.code_version must be a string, got {self.code_version!r}")
        for name in ("num_model_layers", "tokens", "hidden_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"CacheKey.{name} must be an integer >= 1, got {value!r}")
        if not self.layers:
            raise ConfigError("CacheKey.layers must name at least one layer, got ()")
        if list(self.layers) != sorted(set(self.layers)):
            raise ConfigError(f"CacheKey.layers must be strictly ascending, got {self.layers}")
        if self.layers[0] < 0 or self.layers[-1] >= self.num_model_layers:
            raise ConfigError(
                f"CacheKey.layers must lie in [0, {self.num_model_layers}) (num_model_layers), got {self.layers}"
            )
        if self.dtype not in LATENT_DTYPES:
            raise ConfigError(f"CacheKey.dtype must be one of {LATENT_DTYPES}, got {self.dtype!r}")
        if self.latents not in LATENT_KINDS:
            raise ConfigError(f"CacheKey.latents must be one of {LATENT_KINDS}, got {self.latents!r}")
        if self.questions not in QUESTION_MODES:
            raise ConfigError(f"CacheKey.questions must be one of {QUESTION_MODES}, got {self.questions!r}")
        if not self.splits:
            raise ConfigError("CacheKey.splits must name at least one split, got ()")
        if self.format_version != CACHE_FORMAT_VERSION:
            raise ConfigError(
                f"CacheKey.format_version {self.format_version!r} is not supported (this code reads {CACHE_FORMAT_VERSION})"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["splits"] = list(self.splits)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CacheKey:
        """Parse a stored key; CacheError naming the missing/unknown/bad field."""
        if not isinstance(d, Mapping):
            raise CacheError(f"cache key must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CacheError(f"cache key has unknown field {unknown[0]!r}")
        missing = [
            f.name
            for f in fields(cls)
            if f.name not in d and f.name not in ("dtype", "format_version", "model_stand_in", "backend")
        ]
        if missing:
            raise CacheError(f"cache key is missing field {missing[0]!r}")
        if "format_version" in d and d["format_version"] != CACHE_FORMAT_VERSION:
            raise CacheError(
                f"cache format_version {d['format_version']!r} is not supported (this code reads {CACHE_FORMAT_VERSION})"
            )
        try:
            return cls(**dict(d))
        except (ConfigError, TypeError) as err:
            raise CacheError(f"cache key is invalid: {err}") from err

    @classmethod
    def for_latents(
        cls,
        latent: LatentKey,
        *,
        model_stand_in: bool,
        num_model_layers: int,
        dataset_version: str,
        splits: tuple[str, ...],
        index_hash: str,
        code_version: str,
    ) -> CacheKey:
        """The key of a cache holding `latent`'s latents for these samples (what a harvest writes)."""
        return cls(
            **latent.to_dict(),
            model_stand_in=model_stand_in,
            num_model_layers=num_model_layers,
            dataset_version=dataset_version,
            splits=splits,
            index_hash=index_hash,
            code_version=code_version,
        )

    def latent_key(self, layers: tuple[int, ...] | None = None) -> LatentKey:
        """The latent part of this key; `layers` (default: all the cache holds) must be among its layers."""
        used = self.layers if layers is None else tuple(int(x) for x in layers)
        if not set(used) <= set(self.layers):
            raise ConfigError(f"layers {list(used)} are not all among the cache's layers {list(self.layers)}")
        return LatentKey(
            backend=self.backend,
            model=self.model,
            model_hash=self.model_hash,
            processor_hash=self.processor_hash,
            prompt_hash=self.prompt_hash,
            tokens=self.tokens,
            hidden_size=self.hidden_size,
            dtype=self.dtype,
            layers=used,
            compute_dtype=self.compute_dtype,
            attn_implementation=self.attn_implementation,
            latents=self.latents,
            decode=self.decode,
            questions=self.questions,
        )


@dataclass(frozen=True, kw_only=True)
class ManifestRow:
    """One row of the cache (row = position in the manifest): a sample asked one of its questions. The rows
    of a sample are consecutive, its questions numbered 0, 1, ... (0: the one eval reads)."""

    sample_token: str
    scene_token: str
    frame_index: int
    timestamp: int
    question: int = 0
    """Which of the sample's questions (`PromptSource.select` order)."""
    category: str = ""
    """That question's DriveLM category ("" for a sample that has none to ask)."""


@dataclass(frozen=True, kw_only=True)
class CacheLayout:
    """Shapes and storage of the arrays; derived from the key, the manifest and the shard size."""

    samples: int
    """N: rows of every array (= manifest rows)."""
    layers: int
    """L: captured layers per sample."""
    tokens: int
    """T: positions per sample."""
    hidden_size: int
    """H."""
    shard_size: int
    """S: samples per shard file (the same for every array)."""
    dtype: LatentDType
    """Logical dtype of `hidden`."""
    storage_dtype: str
    """numpy dtype of `hidden` on disk (uint16 for bfloat16)."""
    manifest_sha256: str
    """Hash of the manifest rows, so a resume with another sample list is refused."""
    cache_id: str
    """Random id of this cache; commit records carry it, so records of another cache are never trusted."""
    arrays: tuple[str, ...] = field(default=ARRAY_NAMES)
    """Arrays under latents.zarr."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "arrays", tuple(self.arrays))
        for name in ("samples", "layers", "tokens", "hidden_size", "shard_size"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (0 if name == "samples" else 1)
            ):
                raise ConfigError(f"CacheLayout.{name} must be a positive integer, got {value!r}")
        if self.dtype not in LATENT_DTYPES:
            raise ConfigError(f"CacheLayout.dtype must be one of {LATENT_DTYPES}, got {self.dtype!r}")
        if self.storage_dtype != STORAGE_DTYPE[self.dtype]:
            raise ConfigError(
                f"CacheLayout.storage_dtype must be {STORAGE_DTYPE[self.dtype]!r} for dtype {self.dtype!r}, "
                f"got {self.storage_dtype!r}"
            )
        if self.arrays != ARRAY_NAMES:
            raise ConfigError(f"CacheLayout.arrays must be {ARRAY_NAMES}, got {self.arrays}")

    @property
    def num_shards(self) -> int:
        return -(-self.samples // self.shard_size)

    @property
    def token_width(self) -> int:
        """Columns of `token_ids`: T-1 generated tokens, at least 1 so the array is never empty."""
        return max(self.tokens - 1, 1)

    def shard_rows(self, shard: int) -> range:
        if not 0 <= shard < self.num_shards:
            raise CacheError(f"shard {shard} is out of range [0, {self.num_shards})")
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.samples))

    def sample_bytes(self) -> int:
        """Bytes of one sample's hidden states on disk."""
        itemsize = 4 if self.storage_dtype == "float32" else 2
        return self.layers * self.tokens * self.hidden_size * itemsize

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arrays"] = list(self.arrays)
        d["num_shards"] = self.num_shards
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CacheLayout:
        if not isinstance(d, Mapping):
            raise CacheError(f"cache layout must be a JSON object, got {type(d).__name__}")
        d = {k: v for k, v in d.items() if k != "num_shards"}
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(d) - {"arrays"})
        if missing:
            raise CacheError(f"cache layout is missing field {missing[0]!r}")
        unknown = sorted(set(d) - names)
        if unknown:
            raise CacheError(f"cache layout has unknown field {unknown[0]!r}")
        try:
            return cls(**d)
        except (ConfigError, TypeError) as err:
            raise CacheError(f"cache layout is invalid: {err}") from err


@dataclass(frozen=True, kw_only=True)
class ShardFileRecord:
    """One array's shard file as it was committed."""

    path: str
    """Path relative to the cache root."""
    nbytes: int
    """File size."""
    crc32c: str
    """crc32c of the file's bytes, 8 hex digits."""


@dataclass(frozen=True, kw_only=True)
class CommitRecord:
    """Proof that a shard was written whole; written last, by rename, as commits/NNNNNN.json."""

    shard: int
    """Shard index."""
    rows: tuple[int, int]
    """Row range [start, stop) the shard holds."""
    files: dict[str, ShardFileRecord]
    """Per array name, its shard file's path, size and checksum."""
    failures: tuple[tuple[str, str], ...]
    """(sample_token, reason) for samples of this shard that could not be harvested."""
    cache_id: str
    """The cache this record belongs to (CacheLayout.cache_id)."""
    time: float
    """Unix time of the commit."""
    format_version: int = CACHE_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "shard": self.shard,
            "rows": list(self.rows),
            "files": {name: asdict(rec) for name, rec in self.files.items()},
            "failures": [list(f) for f in self.failures],
            "cache_id": self.cache_id,
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CommitRecord:
        """Parse a stored record; CacheError saying what is wrong."""
        try:
            if d["format_version"] != CACHE_FORMAT_VERSION:
                raise CacheError(f"commit record format_version {d['format_version']!r} is not supported")
            files = {str(name): ShardFileRecord(**rec) for name, rec in d["files"].items()}
            start, stop = (int(x) for x in d["rows"])
            failures = tuple((str(t), str(r)) for t, r in d["failures"])
            return cls(
                shard=int(d["shard"]),
                rows=(start, stop),
                files=files,
                failures=failures,
                cache_id=str(d["cache_id"]),
                time=float(d["time"]),
            )
        except CacheError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CacheError(f"commit record is malformed ({type(err).__name__}: {err})") from err
