"""How the cache's arrays lie on disk: Zarr v3 sharded arrays, and direct reads of their shard files.

zarr-python writes the arrays (one shard = S consecutive samples = one file per array). Reading a random
batch through zarr-python costs ~0.05-0.25 GB/s, so the reader goes to the bytes itself: the arrays are
uncompressed (bytes codec, then zarr's crc32c codec, which appends the crc32c of each inner chunk's bytes as
4 little-endian bytes, so zarr-python checks it too), and the sharding codec keeps, at the end of each shard
file, an index of (offset, nbytes) uint64 little-endian per inner chunk followed by a crc32c of that index.
One inner chunk of `hidden` is one sample, so a sample is one contiguous byte range at a known offset, its
checksum right behind it. `check_array_metadata` makes sure the arrays are exactly of this form before the
reader trusts that; `ShardIndex.parse` checks the index crc, `chunk_crc_ok` a chunk's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from fastcrc.crc32 import iscsi as crc32c
from zarr.codecs import Crc32cCodec

from netroller.errors import CacheError
from netroller.storage.schema import HIDDEN, LENGTH, TOKEN_IDS, ZARR_DIR, CacheLayout

# crc32c(data, initial=0) -> int (fastcrc's): the crc32c (Castagnoli, as zarr's crc32c codec) of a bytes-like
# object's bytes (a C-contiguous array, bytes, a memoryview), continuing from `initial`: crc32c(b, crc32c(a))
# equals crc32c(a + b). fastcrc folds by carry-less multiplication (PCLMULQDQ / PMULL), ~60 GB/s on one core
# where google-crc32c's crc32 instruction (zarr's) gives ~30 and a sample's memcpy ~20: the training reader
# checks every sample it returns, so this halves the cost of that check.

MAX_UINT64 = np.uint64(2**64 - 1)
_CRC_BYTES = 4
_ENTRY_BYTES = 16  # (offset, nbytes) uint64 each
LENGTH_DTYPE = "int32"
TOKEN_DTYPE = "int32"
TOKEN_PAD = -1


@dataclass(frozen=True, kw_only=True)
class ArraySpec:
    """Shape and storage of one array of the cache."""

    shape: tuple[int, ...]
    inner: tuple[int, ...]
    """Inner chunk shape (what one index entry of a shard covers)."""
    shard: tuple[int, ...]
    """Shard shape: S rows and everything else whole."""
    dtype: str
    fill: int | float

    @property
    def chunks_per_shard(self) -> int:
        return self.shard[0] // self.inner[0]

    @property
    def inner_nbytes(self) -> int:
        """Data bytes of one inner chunk (without its crc32c)."""
        return int(np.prod(self.inner)) * np.dtype(self.dtype).itemsize

    @property
    def stored_nbytes(self) -> int:
        """Bytes of one inner chunk in the shard file: its data and the crc32c behind it."""
        return self.inner_nbytes + _CRC_BYTES


def array_specs(layout: CacheLayout) -> dict[str, ArraySpec]:
    n, s = layout.samples, layout.shard_size
    lth = (layout.layers, layout.tokens, layout.hidden_size)
    w = layout.token_width
    return {
        # One sample per inner chunk: a sample is one contiguous byte range.
        HIDDEN: ArraySpec(
            shape=(n, *lth), inner=(1, *lth), shard=(s, *lth), dtype=layout.storage_dtype, fill=0
        ),
        # Small per-sample arrays: the whole shard is one inner chunk, read in one go.
        LENGTH: ArraySpec(shape=(n,), inner=(s,), shard=(s,), dtype=LENGTH_DTYPE, fill=0),
        TOKEN_IDS: ArraySpec(shape=(n, w), inner=(s, w), shard=(s, w), dtype=TOKEN_DTYPE, fill=TOKEN_PAD),
    }


def create_arrays(root: Path, layout: CacheLayout, *, logical_dtype: str) -> None:
    """Create ROOT/latents.zarr with the three empty sharded arrays."""
    group = zarr.open_group(Path(root) / ZARR_DIR, mode="w", zarr_format=3)
    for name, spec in array_specs(layout).items():
        group.create_array(
            name,
            shape=spec.shape,
            chunks=spec.inner,
            shards=spec.shard,
            dtype=spec.dtype,
            fill_value=spec.fill,
            compressors=[
                Crc32cCodec()
            ],  # per inner chunk (= per sample of `hidden`): a crc32c behind the bytes
            filters=None,
            # Keep all-zero samples (failed ones) as real chunks, so every committed shard is complete.
            config={"write_empty_chunks": True},
            chunk_key_encoding={"name": "default", "separator": "/"},
            attributes={"netroller_dtype": logical_dtype} if name == HIDDEN else {},
        )


def shard_relpath(name: str, shard: int, ndim: int) -> str:
    """Path of an array's shard file relative to the cache root (default chunk keys, '/' separator)."""
    return "/".join([ZARR_DIR, name, "c", str(shard), *(["0"] * (ndim - 1))])


def _expected_metadata(spec: ArraySpec) -> dict[str, Any]:
    return {
        "shape": list(spec.shape),
        "data_type": spec.dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(spec.shard)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": list(spec.inner),
                    "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
                    "index_codecs": [
                        {"name": "bytes", "configuration": {"endian": "little"}},
                        {"name": "crc32c"},
                    ],
                    "index_location": "end",
                },
            }
        ],
    }


def check_array_metadata(root: Path, layout: CacheLayout) -> None:
    """CacheError naming the zarr.json whose array is not stored the way the direct reader expects."""
    for name, spec in array_specs(layout).items():
        path = Path(root) / ZARR_DIR / name / "zarr.json"
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CacheError(f"array metadata {path} is missing or unreadable: {err}") from err
        for field, want in _expected_metadata(spec).items():
            if meta.get(field) != want:
                raise CacheError(f"array metadata {path}: {field} is {meta.get(field)!r}, expected {want!r}")


def file_crc32c(path: str | Path, *, block: int = 8 << 20) -> tuple[int, str]:
    """(size in bytes, crc32c as 8 hex digits) of a file's bytes."""
    crc = size = 0
    buf = memoryview(bytearray(block))  # one buffer, filled again and again: no allocation per block
    with open(path, "rb", buffering=0) as f:
        while got := f.readinto(buf):
            crc = crc32c(buf[:got], crc)
            size += got
    return size, f"{crc:08x}"


@dataclass(frozen=True)
class ShardIndex:
    """Byte ranges of a shard file's inner chunks; offset MAX_UINT64 marks a chunk never written."""

    offsets: np.ndarray  # (chunks_per_shard,) uint64
    nbytes: np.ndarray  # (chunks_per_shard,) uint64

    @classmethod
    def read(cls, fd: int, file_size: int, spec: ArraySpec, *, where: str) -> ShardIndex:
        """Read and check the index at the end of an open shard file; CacheError naming `where` if bad."""
        size = index_nbytes(spec)
        if file_size < size:
            raise CacheError(f"shard file {where} is truncated ({file_size} bytes, index alone is {size})")
        raw = os.pread(fd, size, file_size - size)
        if len(raw) != size:
            raise CacheError(f"shard file {where}: short read of its index")
        return cls.parse(raw, file_size, spec, where=where)

    @classmethod
    def parse(cls, raw: bytes | memoryview, file_size: int, spec: ArraySpec, *, where: str) -> ShardIndex:
        """Check the index bytes `raw` (the last `index_nbytes(spec)` bytes of a shard file of `file_size`
        bytes); CacheError naming `where` if its checksum does not match or it points outside the data."""
        n = spec.chunks_per_shard
        size = index_nbytes(spec)
        if file_size < size or len(raw) != size:
            raise CacheError(f"shard file {where} is truncated ({file_size} bytes, index alone is {size})")
        body, stored = raw[:-_CRC_BYTES], bytes(raw[-_CRC_BYTES:])
        if np.uint32(crc32c(bytes(body))).tobytes() != stored:
            raise CacheError(f"shard file {where}: the shard index checksum does not match (damaged file)")
        table = np.frombuffer(body, dtype="<u8").reshape(n, 2)
        offsets, nbytes = table[:, 0].copy(), table[:, 1].copy()
        written = offsets != MAX_UINT64
        data_end = file_size - size
        if np.any(nbytes[written] != spec.stored_nbytes):
            raise CacheError(
                f"shard file {where}: an inner chunk is not {spec.stored_nbytes} bytes "
                "(not an uncompressed, checksummed cache)"
            )
        if np.any(offsets[written] + nbytes[written] > data_end):
            raise CacheError(f"shard file {where}: the index points past the data (damaged file)")
        return cls(offsets=offsets, nbytes=nbytes)


def index_nbytes(spec: ArraySpec) -> int:
    """Bytes of a shard file's index (at its end): an (offset, nbytes) entry per inner chunk and a crc32c."""
    return spec.chunks_per_shard * _ENTRY_BYTES + _CRC_BYTES


def chunk_crc_ok(data: np.ndarray, stored: int) -> bool:
    """Whether the bytes of `data` (a C-contiguous array) have the crc32c `stored` (the uint32 zarr wrote)."""
    return crc32c(data) == stored


def read_inner_chunk(fd: int, index: ShardIndex, chunk: int, spec: ArraySpec, *, where: str) -> np.ndarray:
    """One whole inner chunk as an array of shape `spec.inner`, its crc32c checked (CacheError naming `where`
    and the chunk if it does not match); fill values if it was never written."""
    out = np.empty(spec.inner, dtype=np.dtype(spec.dtype).newbyteorder("<"))
    if index.offsets[chunk] == MAX_UINT64:
        out.fill(spec.fill)
        return out
    crc = np.empty(1, dtype="<u4")
    offset = int(index.offsets[chunk])
    pread_into(fd, memoryview(out).cast("B"), offset, where=where)
    pread_into(fd, memoryview(crc).cast("B"), offset + spec.inner_nbytes, where=where)
    if not chunk_crc_ok(out, int(crc[0])):
        raise CacheError(
            f"shard file {where}: the checksum of inner chunk {chunk} does not match (damaged data)"
        )
    return out


def pread_into(fd: int, buf: memoryview, offset: int, *, where: str) -> None:
    """Fill `buf` from the file at `offset` (one syscall normally; loops on short reads)."""
    done = 0
    while done < len(buf):
        got = os.preadv(fd, [buf[done:]], offset + done)
        if got <= 0:
            raise CacheError(f"shard file {where}: unexpected end of file at byte {offset + done}")
        done += got


# bfloat16 is the upper half of a float32; numpy has no bfloat16, so the cache stores those bits as uint16.
def float_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float values to bfloat16 (round to nearest even), returning the bits as uint16."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(bits.view(np.float32))
    out = rounded.astype(np.uint16)
    out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)  # stay a (quiet) NaN
    return out


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Exact float32 values of bfloat16 bits."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
