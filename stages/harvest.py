"""The harvest stage: run the GM once over every indexed sample and write its hidden states to the cache.

    cfg = HarvestConfig(index=Path("work/index.parquet"), out=Path("work/cache"), tokens=1, workers=0)
    harvest(cfg)   # -> Path("work/cache")

Every input is checked (index, GM, layers, prompts) before the cache folder is created, so a bad
argument leaves nothing behind. The work unit is one shard of consecutive samples (`harvest_shard`),
written whole by one worker and committed last. A re-run first re-hashes every committed shard against its
commit record and recomputes the shards without a valid record or whose bytes changed (`verify=False`, the
CLI's `--no-verify`, trusts committed shards after the cheap record-and-size check). `workers=0` runs in
this process; `workers>=1` hands the shards to Ray actors through `netroller.distributed.ray_harvest`, the
only module that imports Ray. Both run the same `ShardJob`: loaded once per worker, it computes whole shards.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

import netroller
from netroller.data.cameras import load_camera_images
from netroller.data.index import CAMERAS, SPLITS, Index, SampleRecord, file_hash, read_index
from netroller.errors import CacheError, ConfigError, DataError, MissingPathError
from netroller.models.gm.capture import (
    Capturer,
    CaptureSpec,
    DecodeMode,
    Decoding,
    Query,
    resolve_layers,
)
from netroller.models.gm.loader import (
    AttnImplementation,
    GMDtype,
    GMInfo,
    default_compute_dtype,
    inspect_gm,
    load_processor,
    split_backend,
)
from netroller.models.gm.prompts import PromptFormat, PromptSource, QAItem, prompt_hash
from netroller.models.gm.tiny import build_tiny_gm, default_tiny_gm_path
from netroller.storage.schema import (
    LATENT_DTYPES,
    LATENT_KINDS,
    QUESTION_MODES,
    CacheKey,
    LatentDType,
    LatentKey,
    LatentKind,
    ManifestRow,
    QuestionMode,
)
from netroller.storage.writer import CacheWriter

if TYPE_CHECKING:
    from netroller.storage.schema import CommitRecord


# Samples per GM pass when not given. CPU: `make bench` (harvest batch_*; tiny GM, T=8, one thread as an actor
# has) measured batch 4 at 1.48x the samples/s of batch 1 and batch 16 at 1.29x. CUDA: a 7B model in bfloat16
# is kept busy from about 8 samples of 6 images (not measured here: no GPU was lent to this work).
DEFAULT_BATCH = {"cpu": 4, "cuda": 8}
NO_ANSWER = "no DriveLM answer to teacher-force (the sample has no QA item with an 'A')"


@dataclass(frozen=True, kw_only=True)
class HarvestConfig:
    """What to harvest, from which GM, into which cache, with how many workers."""

    index: Path
    """The sample index written by `netroller prepare` (Parquet)."""
    out: Path
    """The cache folder (created; an existing cache with the same key is resumed)."""
    model: str | None = None
    """GM checkpoint: a local `save_pretrained` folder or a hub id, a LLaMA-Adapter V2 folder (its released
    files, "llama-adapter:DIR" to name the backend); None = the embedded tiny random GM."""
    tokens: int = 1
    """T: positions kept per sample (the last prompt token + up to T-1 generated tokens); >= 1."""
    layers: str = "all"
    """Decoder layers to capture: "all", a comma list "0,15,31", negatives count from the end ("-1")."""
    dtype: LatentDType = "float16"
    """Storage dtype of the hidden states in the cache."""
    prompt: str | None = None
    """Prompt template text; None = the GM package's DEFAULT_TEMPLATE."""
    drivelm: Path | None = None
    """DriveLM-format QA JSON: per-sample questions (samples without one use `prompt`)."""
    splits: tuple[str, ...] = ("train", "val")
    """Index splits to harvest, in index order."""
    shard_size: int = 16
    """Samples per shard: the work unit of one worker and the unit of commit/resume."""
    workers: int = 1
    """0 = in this process without Ray; >= 1 = that many Ray actors, each holding one GM."""
    gpus_per_worker: float = 0.0
    """GPUs reserved per actor (> 0 runs the GM on CUDA); with workers=0, > 0 also selects CUDA."""
    ray_address: str | None = None
    """An existing Ray cluster ("ray://host:10001", "auto"); None = RAY_ADDRESS or a local instance."""
    batch_size: int | None = None
    """Samples per GM pass inside a worker (padded); None = `DEFAULT_BATCH` for the device."""
    gm_dtype: GMDtype | None = None
    """Precision the GM computes in; None = bfloat16 on CUDA, float32 on CPU."""
    attn_implementation: AttnImplementation = "sdpa"
    """The GM's attention kernel: "sdpa", "eager", or "flash_attention_2" (needs flash-attn)."""
    channel_order: str | None = None
    """LLaMA-Adapter GMs: the images' channel order, "bgr" (the authors', read with OpenCV; the default) or
    "rgb"; recorded in the key through the prompt hash."""
    prompt_format: PromptFormat = "auto"
    """"chat": the processor's chat template (6 images interleaved with their camera names); "alpaca":
    the authors' LLaMA-Adapter format; "auto": chat when the processor has a template."""
    latents: LatentKind = "generated"
    """"generated": the GM answers; "teacher-forced": it reads each sample's DriveLM answer (needs drivelm)."""
    decode: DecodeMode = "greedy"
    """Generated answers: "greedy", or "sample" with `temperature` and `top_p`."""
    temperature: float = 0.1
    """Sampling temperature (the authors' 0.1)."""
    top_p: float = 0.75
    """Sampling nucleus mass (the authors' 0.75)."""
    seed: int = 0
    """Run seed of sampling; each sample is seeded from it and its token (reproducible, resumable)."""
    questions: QuestionMode = "one"
    """DriveLM questions asked per sample, one cache row each: "one" (its first planning question), "per-category"
    (that, then the first of each other category) or "all"; training draws one per sample per epoch."""
    overwrite: bool = False
    """Replace an existing cache built with a different key instead of refusing."""
    verify: bool = True
    """Re-hash every committed shard first and recompute damaged ones; False trusts a committed shard whose
    record and file sizes match (faster on a huge cache, but damaged bytes stay)."""
    progress: bool = True
    """Print the plan line and show a tqdm bar."""

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, int) or self.tokens < 1:
            raise ConfigError(f"tokens must be an integer >= 1, got {self.tokens!r}")
        if not isinstance(self.layers, str) or not self.layers.strip():
            raise ConfigError(f"layers must be 'all', a comma list or '-1', got {self.layers!r}")
        if self.dtype not in LATENT_DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(LATENT_DTYPES)}, got {self.dtype!r}")
        if not self.splits:
            raise ConfigError("splits must name at least one split, got ()")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise ConfigError(f"splits must be among {', '.join(SPLITS)}, got {bad[0]!r}")
        if len(set(self.splits)) != len(self.splits):
            raise ConfigError(f"splits has a duplicate: {self.splits!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ConfigError(f"shard_size must be an integer >= 1, got {self.shard_size!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"workers must be an integer >= 0, got {self.workers!r}")
        if self.gpus_per_worker < 0:
            raise ConfigError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.latents not in LATENT_KINDS:
            raise ConfigError(f"latents must be one of {', '.join(LATENT_KINDS)}, got {self.latents!r}")
        if self.latents == "teacher-forced" and self.drivelm is None:
            raise ConfigError("teacher-forced latents need the answers of a DriveLM file: give --drivelm")
        if self.questions not in QUESTION_MODES:
            raise ConfigError(f"questions must be one of {', '.join(QUESTION_MODES)}, got {self.questions!r}")
        if self.questions != "one" and self.drivelm is None:
            raise ConfigError(
                f"--questions {self.questions} needs a DriveLM file's questions: give --drivelm"
            )
        if self.latents == "teacher-forced" and self.decode != "greedy":
            raise ConfigError("--decode applies to generated latents; teacher-forced latents decode nothing")
        _ = self.decoding  # Decoding checks temperature, top-p and seed

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_worker > 0 else "cpu"

    @property
    def decoding(self) -> Decoding:
        return Decoding(mode=self.decode, temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    @property
    def compute_dtype(self) -> GMDtype:
        return self.gm_dtype or default_compute_dtype(self.device)

    @property
    def samples_per_pass(self) -> int:
        return self.batch_size or DEFAULT_BATCH[self.device]


@dataclass(frozen=True)
class HarvestRow:
    """One row of the cache to compute: a sample and the question it is asked (None: nothing to ask, as a
    sample without an answer to teacher-force)."""

    record: SampleRecord
    question: int
    item: QAItem | None


@dataclass(kw_only=True)
class HarvestPlan:
    """Everything checked and resolved before a single byte of cache is written."""

    cfg: HarvestConfig
    gm: GMInfo  # from the config and files: the driver never loads the weights
    capture: CaptureSpec  # how every worker loads the GM and captures
    records: list[SampleRecord]
    rows: list[HarvestRow]  # in manifest order
    dataroot: Path
    key: CacheKey
    manifest: list[ManifestRow] = field(default_factory=list)


def _select_records(index: Index, splits: Sequence[str]) -> list[SampleRecord]:
    wanted = set(splits)
    records = [r for r in index.records if r.split in wanted]
    if not records:
        raise DataError(f"{index.path}: no samples in splits {', '.join(splits)}")
    for r in records:
        if len(r.cam_paths) != len(CAMERAS):
            raise DataError(
                f"{index.path}: sample {r.sample_token} has {len(r.cam_paths)} camera paths, expected {len(CAMERAS)}"
            )
    return records


def _prompt_source(cfg: HarvestConfig) -> PromptSource:
    if cfg.drivelm is not None:
        return PromptSource.drivelm(Path(cfg.drivelm), fallback=cfg.prompt)
    return PromptSource.template(cfg.prompt)


def plan_harvest(cfg: HarvestConfig) -> HarvestPlan:
    """Check every input and compute the cache key; raises a NetrollerError, writes nothing under cfg.out."""
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise ConfigError(f"out must be a folder, but {cfg.out} is a file")
    index = read_index(cfg.index)
    records = _select_records(index, cfg.splits)
    dataroot = index.dataroot()
    if not dataroot.is_dir():
        raise MissingPathError(f"dataroot of {cfg.index} not found: {dataroot}")
    prompts = _prompt_source(cfg)
    rows = _rows(records, prompts, cfg)
    if all(row.item is None for row in rows):
        raise DataError(
            f"DriveLM file {cfg.drivelm} answers none of the samples harvested ('A' beside their 'Q'): "
            "teacher-forced latents need answers"
        )
    model_path = cfg.model if cfg.model is not None else str(build_tiny_gm(default_tiny_gm_path()))
    gm = inspect_gm(
        model_path,
        dtype=cfg.compute_dtype,
        attn_implementation=cfg.attn_implementation,
        fingerprint=True,
        channel_order=cfg.channel_order,
    )
    layers = resolve_layers(cfg.layers, gm.num_layers)
    capture = CaptureSpec(
        model=_absolute_if_local(model_path),
        device=cfg.device,
        compute_dtype=gm.compute_dtype,
        attn_implementation=gm.attn_implementation,
        layers=layers,
        tokens=cfg.tokens,
        cameras=CAMERAS,
        latents=cfg.latents,
        decoding=cfg.decoding,
        prompt_format=cfg.prompt_format,
        channel_order=gm.channel_order,
    )
    hashed = prompt_hash(prompts, load_processor(gm), fmt=cfg.prompt_format, cameras=CAMERAS)
    latent = LatentKey.of_gm(
        gm,
        prompt_hash=hashed,
        tokens=cfg.tokens,
        dtype=cfg.dtype,
        layers=layers,
        latents=cfg.latents,
        decode="none" if cfg.latents == "teacher-forced" else cfg.decoding.describe(),
        questions=cfg.questions,
    )
    key = CacheKey.for_latents(
        latent,
        model_stand_in=gm.is_random_stand_in,
        num_model_layers=gm.num_layers,
        dataset_version=index.meta.version,
        splits=tuple(cfg.splits),
        index_hash=file_hash(cfg.index),
        code_version=netroller.__version__,
    )
    manifest = [
        ManifestRow(
            sample_token=row.record.sample_token,
            scene_token=row.record.scene_token,
            frame_index=row.record.frame_index,
            timestamp=row.record.timestamp,
            question=row.question,
            category=row.item.category if row.item is not None else "",
        )
        for row in rows
    ]
    return HarvestPlan(
        cfg=cfg,
        gm=gm,
        capture=capture,
        records=records,
        rows=rows,
        dataroot=dataroot,
        key=key,
        manifest=manifest,
    )


def _rows(records: Sequence[SampleRecord], prompts: PromptSource, cfg: HarvestConfig) -> list[HarvestRow]:
    """Each sample's questions under cfg.questions, one row each (consecutive, question 0 first); teacher
    forcing asks only answered questions, and a sample without any gets one row with nothing to ask."""
    rows = []
    for r in records:
        items = prompts.select(r.sample_token, cfg.questions, answered=cfg.latents == "teacher-forced")
        rows += [HarvestRow(r, q, item) for q, item in enumerate(items)] or [HarvestRow(r, 0, None)]
    return rows


def harvest_shard(
    writer_root: Path,
    shard: int,
    rows: Sequence[HarvestRow],
    capturer: Capturer,
    dataroot: Path,
    *,
    batch_size: int = 1,
    on_samples: Callable[[int], None] | None = None,
) -> CommitRecord:
    """Capture one shard's rows and write it whole: the work unit of every worker, with or without Ray.

    A sample whose camera images cannot be read, or that has no answer to teacher-force, gets length 0
    (zeros, token ids -1) in its rows and a failures entry with the reason; the rest of the shard goes on.
    `on_samples(n)` is called as rows finish (progress reporting).
    """
    writer = CacheWriter.open(Path(writer_root))
    shard_rows = writer.shard_rows(shard)
    if len(shard_rows) != len(rows):
        raise CacheError(
            f"shard {shard} of {writer_root} has {len(shard_rows)} rows, got {len(rows)} to compute"
        )
    key = writer.key
    n_layers, tokens, hidden_size = len(key.layers), key.tokens, key.hidden_size
    # float16 caches are filled in float16 directly (half the memory per shard); the writer casts the rest.
    buf_dtype = np.float16 if key.dtype == "float16" else np.float32
    hidden = np.zeros((len(rows), n_layers, tokens, hidden_size), dtype=buf_dtype)
    length = np.zeros((len(rows),), dtype=np.int64)
    token_ids = np.full((len(rows), writer.layout.token_width), -1, dtype=np.int64)
    failures: dict[str, str] = {}  # a sample's rows fail together

    pending: list[tuple[int, Query]] = []

    def flush() -> None:
        results = capturer.capture_batch([query for _, query in pending])
        for (i, _), cap in zip(pending, results, strict=True):
            hidden[i] = cap.hidden
            length[i] = cap.length
            token_ids[i, : cap.token_ids.shape[0]] = cap.token_ids  # T=1: one column, left at -1
        if on_samples is not None:
            on_samples(len(pending))
        pending.clear()

    images: tuple[str, list[Image.Image]] | None = None  # the last sample's, shared by its questions
    for i, row in enumerate(rows):
        token = row.record.sample_token
        if token in failures or row.item is None:
            # As the authors' loader: a frame without a DriveLM answer has no latents.
            failures.setdefault(token, NO_ANSWER)
            if on_samples is not None:
                on_samples(1)
            continue
        if images is None or images[0] != token:
            try:
                images = (token, load_camera_images(row.record, dataroot))
            except DataError as err:
                failures[token] = str(err)
                if on_samples is not None:
                    on_samples(1)
                continue
        pending.append((i, Query(images[1], row.item.question, row.item.answer, token)))
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return writer.write_shard(shard, hidden, length, token_ids, tuple(failures.items()))


@dataclass(frozen=True, kw_only=True)
class ShardJob:
    """How a worker computes shards of one harvest: plain data, pickled once to every Ray actor; `load()`
    loads the GM (once per worker) and returns the function that computes and writes one shard."""

    root: Path  # the cache folder (already created by the driver)
    capture: CaptureSpec
    dataroot: Path
    batch_size: int

    def load(self) -> Callable[[int, Sequence[HarvestRow], Callable[[int], None] | None], CommitRecord]:
        capturer = self.capture.capturer()  # files not re-hashed: the driver built the cache key

        def compute(
            shard: int, rows: Sequence[HarvestRow], on_samples: Callable[[int], None] | None = None
        ) -> CommitRecord:
            return harvest_shard(
                self.root,
                shard,
                rows,
                capturer,
                self.dataroot,
                batch_size=self.batch_size,
                on_samples=on_samples,
            )

        return compute


def _human_bytes(n: float) -> str:
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            break
        n /= 1024
    return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"


def _shards_to_do(writer: CacheWriter, verify: bool, log: Callable[[str], None]) -> list[int]:
    """Shards to compute: those without a valid commit record (record and file sizes), and with `verify`
    also committed shards whose bytes no longer match their recorded crc32c."""
    pending = writer.pending_shards()
    if not verify:
        committed = writer.num_shards - len(pending)
        if committed:
            log(
                f"harvest: --no-verify: {committed} committed shard(s) trusted without re-hashing their bytes"
            )
        return pending
    todo = writer.pending_shards(verify=True)
    damaged = sorted(set(todo) - set(pending))
    if damaged:
        log(f"harvest: {len(damaged)} damaged shard(s) will be recomputed: {', '.join(map(str, damaged))}")
    return todo


def harvest(cfg: HarvestConfig) -> Path:
    """Harvest the GM's hidden states for every sample of cfg.splits into the cache at cfg.out."""
    plan = plan_harvest(cfg)
    root = Path(cfg.out)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if cfg.progress else (lambda msg: None)
    writer = CacheWriter.create(root, plan.key, plan.manifest, cfg.shard_size, overwrite=cfg.overwrite)
    with writer.lock():
        todo = _shards_to_do(writer, cfg.verify, log)
        work = [(s, [plan.rows[i] for i in writer.shard_rows(s)]) for s in todo]
        n_todo = sum(len(rows) for _, rows in work)
        stand_in = " (random-weight stand-in)" if plan.gm.is_random_stand_in else ""
        asked = f" asked {len(plan.rows)} questions ({cfg.questions})" if cfg.questions != "one" else ""
        log(
            f"harvest: {len(plan.records)} samples{asked}, {len(todo)}/{writer.num_shards} shards pending "
            f"({n_todo} {'samples' if cfg.questions == 'one' else 'rows'}), estimated cache size {_human_bytes(len(plan.rows) * writer.layout.sample_bytes())} "
            f"(L={len(plan.capture.layers)} x T={cfg.tokens} x H={plan.key.hidden_size} {cfg.dtype}); "
            f"GM {plan.key.model}{stand_in} ({plan.gm.backend}) in {plan.gm.compute_dtype}, {cfg.latents} latents"
            + (f" ({plan.key.decode})" if cfg.latents == "generated" else "")
            + f", batch {cfg.samples_per_pass}; "
            f"{'in-process' if cfg.workers == 0 else f'{cfg.workers} Ray worker(s)'}"
        )
        # Absolute paths: actors run in Ray's worker folder (a job's working dir, another node's cwd), where
        # the driver's relative paths would point elsewhere.
        job = ShardJob(
            root=root.resolve(),
            capture=plan.capture,
            dataroot=plan.dataroot.resolve(),
            batch_size=cfg.samples_per_pass,
        )
        with tqdm(
            total=n_todo, unit="sample", desc="harvest", disable=not cfg.progress, smoothing=0.1
        ) as bar:
            if cfg.workers == 0:
                compute = job.load()
                for shard, rows in work:
                    compute(shard, rows, bar.update)
            else:
                from netroller.distributed.ray_harvest import run_shards

                run_shards(
                    job.load,
                    work,
                    workers=cfg.workers,
                    gpus_per_worker=cfg.gpus_per_worker,
                    ray_address=cfg.ray_address,
                    on_samples=bar.update,
                    on_ready=lambda: bar.reset(total=n_todo),  # rate and ETA from here: exclude Ray start-up
                    log=lambda msg: bar.write(msg, file=sys.stderr) if cfg.progress else None,
                )
                # Progress messages may still be in flight when the last shard returned.
                bar.update(bar.total - bar.n)
        failed = writer.finalize()
    if failed:
        log(f"harvest: {failed} sample(s) could not be harvested; see {root / 'failures.parquet'}")
    return root


def _absolute_if_local(model: str) -> str:
    """A local model folder as an absolute path (actors resolve it from their own cwd), a backend prefix
    ("llama-adapter:") kept; hub ids unchanged."""
    backend, target = split_backend(model)
    path = Path(target).expanduser()
    if not path.exists():
        return model
    return f"{backend}:{path.resolve()}" if backend else str(path.resolve())
