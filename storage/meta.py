"""cache.json: read and write a cache's key and layout; readers refuse other format versions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from netroller.errors import CacheError, MissingPathError
from netroller.storage.atomic import write_json_atomic
from netroller.storage.schema import CACHE_FORMAT_VERSION, CACHE_JSON, MIGRATE_ADVICE, CacheKey, CacheLayout


@dataclass(frozen=True, kw_only=True)
class CacheMeta:
    """What cache.json holds."""

    key: CacheKey
    """Provenance: what the latents are."""
    layout: CacheLayout
    """How they are stored."""


def write_meta(root: Path, meta: CacheMeta) -> None:
    write_json_atomic(
        Path(root) / CACHE_JSON,
        {"format_version": CACHE_FORMAT_VERSION, "key": meta.key.to_dict(), "layout": meta.layout.to_dict()},
    )


def read_meta(root: str | Path) -> CacheMeta:
    """Load ROOT/cache.json; MissingPathError if there is no cache, CacheError naming the path if malformed."""
    root = Path(root)
    path = root / CACHE_JSON
    if not root.exists():
        raise MissingPathError(f"latent cache {root} does not exist")
    if not path.is_file():
        raise CacheError(f"{root} is not a latent cache: {path} is missing")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CacheError(f"{path} is not readable JSON: {err}") from err
    if not isinstance(doc, dict):
        raise CacheError(f"{path} must hold a JSON object, got {type(doc).__name__}")
    version = doc.get("format_version")
    if isinstance(version, int) and 1 <= version < CACHE_FORMAT_VERSION:
        what = {1: "samples without checksums", 2: "no record of how the GM computed and answered"}[version]
        raise CacheError(
            f"{path} has format_version {version} ({what}); this code reads version "
            f"{CACHE_FORMAT_VERSION} only: {MIGRATE_ADVICE}"
        )
    if version != CACHE_FORMAT_VERSION:
        raise CacheError(
            f"{path} has format_version {version!r}; this code reads version {CACHE_FORMAT_VERSION} only"
        )
    for part in ("key", "layout"):
        if part not in doc:
            raise CacheError(f"{path} has no {part!r} section")
    try:
        key = CacheKey.from_dict(doc["key"])
        layout = CacheLayout.from_dict(doc["layout"])
    except CacheError as err:
        raise CacheError(f"{path}: {err}") from err
    if layout.tokens != key.tokens or layout.hidden_size != key.hidden_size or layout.dtype != key.dtype:
        raise CacheError(f"{path}: layout (T, H, dtype) disagrees with the key")
    if layout.layers != len(key.layers):
        raise CacheError(f"{path}: layout has {layout.layers} layers but the key lists {len(key.layers)}")
    return CacheMeta(key=key, layout=layout)
