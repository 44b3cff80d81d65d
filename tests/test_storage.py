"""The latent cache: round trips, the commit guard, resume and repair, key checks, the lock, verify, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import google_crc32c
import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
import zarr
from typer.testing import CliRunner

from netroller.cli.cache_cmd import register
from netroller.errors import CacheError, CacheKeyMismatchError, CacheLockedError, MissingPathError
from netroller.storage import commits
from netroller.storage.reader import CacheReader
from netroller.storage.schema import (
    CACHE_FORMAT_VERSION,
    CACHE_JSON,
    FAILURES_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    CacheKey,
    ManifestRow,
)
from netroller.storage.shard_format import crc32c, float_to_bf16_bits
from netroller.storage.verify import cache_info, verify_cache
from netroller.storage.writer import CacheWriter

N, S, L, T, H = 10, 4, 2, 3, 8  # 3 shards: 4 + 4 + 2 rows


def make_key(**changes) -> CacheKey:
    base = CacheKey(
        model="tiny-llava",
        model_hash="m0",
        processor_hash="p0",
        prompt_hash="q0",
        layers=(0, 2),
        num_model_layers=4,
        tokens=T,
        hidden_size=H,
        dtype="float16",
        compute_dtype="float32",
        attn_implementation="sdpa",
        latents="generated",
        decode="greedy",
        questions="one",
        dataset_version="v1.0-mini",
        splits=("train",),
        index_hash="i0",
        code_version="0.1.0",
    )
    return dataclasses.replace(base, **changes)


def make_manifest(n: int = N) -> list[ManifestRow]:
    return [
        ManifestRow(sample_token=f"tok{i:03d}", scene_token=f"scene{i // 5}", frame_index=i % 5, timestamp=i)
        for i in range(n)
    ]


def sample_data(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N, L, T, H)).astype(np.float32)


def write_shards(writer: CacheWriter, data: np.ndarray, shards=None, failures=None) -> None:
    failures = failures or {}
    for shard in writer.pending_shards() if shards is None else shards:
        rows = writer.shard_rows(shard)
        fails = [(t, r) for t, r in failures.items() if int(t[3:]) in rows]
        length = np.array([0 if f"tok{r:03d}" in failures else T for r in rows])
        ids = np.tile(np.arange(T - 1), (len(rows), 1)) + 100 * np.arange(rows.start, rows.stop)[:, None]
        writer.write_shard(shard, data[rows.start : rows.stop], length, ids, fails)


@pytest.fixture
def cache(tmp_path) -> tuple[Path, np.ndarray]:
    """A complete float16 cache of N samples."""
    root = tmp_path / "cache"
    data = sample_data()
    writer = CacheWriter.create(root, make_key(), make_manifest(), S)
    write_shards(writer, data)
    return root, data


def tokens(rows) -> list[str]:
    return [f"tok{r:03d}" for r in rows]


# ---- round trips ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_returns_what_was_written(tmp_path, dtype):
    data = sample_data()
    writer = CacheWriter.create(tmp_path / "c", make_key(dtype=dtype), make_manifest(), S)
    write_shards(writer, data)
    batch = CacheReader(tmp_path / "c").read(tokens([7, 0, 9, 3]))
    assert batch.hidden.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(batch.hidden, data[[7, 0, 9, 3]].astype(dtype))
    assert batch.present.all() and (batch.length == T).all()


def test_bfloat16_round_trip_keeps_bits_exactly(tmp_path):
    bits = float_to_bf16_bits(sample_data())
    exact = (bits.astype(np.uint32) << 16).view(np.float32)  # values representable in bfloat16
    writer = CacheWriter.create(tmp_path / "c", make_key(dtype="bfloat16"), make_manifest(), S)
    write_shards(writer, exact)
    raw = zarr.open_array(tmp_path / "c" / "latents.zarr" / "hidden", mode="r")
    assert raw.dtype == np.uint16 and raw.attrs["netroller_dtype"] == "bfloat16"
    np.testing.assert_array_equal(raw[:], bits)
    batch = CacheReader(tmp_path / "c").read(tokens(range(N)))
    assert batch.hidden.dtype == np.float32
    np.testing.assert_array_equal(batch.hidden, exact)


def test_bfloat16_rounds_to_nearest_even():
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, np.inf], dtype=np.float32)
    assert float_to_bf16_bits(x).tolist() == [0x3F80, 0x3F80, 0x3F82, 0xC020, 0x7F80]


def test_reader_equals_zarr_python_for_every_row(cache):
    root, _ = cache
    expect = zarr.open_array(root / "latents.zarr" / "hidden", mode="r")[:]
    lengths = zarr.open_array(root / "latents.zarr" / "length", mode="r")[:]
    batch = CacheReader(root).read(tokens(range(N)))
    np.testing.assert_array_equal(batch.hidden, expect)
    np.testing.assert_array_equal(batch.length, lengths)


def test_unknown_token_comes_back_absent(cache):
    batch = CacheReader(cache[0]).read(["nope", "tok001"])
    assert batch.present.tolist() == [False, True]
    assert not batch.hidden[0].any() and batch.length[0] == 0


# ---- the commit guard ------------------------------------------------------------------------------------


def test_uncommitted_shard_is_absent_never_fill_values(tmp_path):
    data = sample_data()
    writer = CacheWriter.create(tmp_path / "c", make_key(), make_manifest(), S)
    write_shards(writer, data, shards=[0])
    reader = CacheReader(tmp_path / "c")
    batch = reader.read(tokens([0, 5, 9]))  # 5 and 9 lie in shards 1 and 2, never written
    assert batch.present.tolist() == [True, False, False]
    assert "tok005" not in reader and "tok000" in reader


def test_crash_between_array_write_and_commit_leaves_shard_pending(tmp_path, monkeypatch):
    data = sample_data()
    writer = CacheWriter.create(tmp_path / "c", make_key(), make_manifest(), S)

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt("killed before the commit")

    monkeypatch.setattr(commits, "write_commit", crash)
    with pytest.raises(KeyboardInterrupt):
        write_shards(writer, data, shards=[1])
    monkeypatch.undo()
    assert (tmp_path / "c" / "latents.zarr" / "hidden" / "c" / "1" / "0" / "0" / "0").exists()
    assert writer.pending_shards() == [0, 1, 2]
    assert not CacheReader(tmp_path / "c").read(tokens([4])).present.any()


def test_commit_record_is_written_after_the_shard_files(cache):
    root, _ = cache
    record = commits.read_commit(root, 1)
    for rec in record.files.values():
        assert os.stat(root / rec.path).st_mtime_ns <= os.stat(commits.commit_path(root, 1)).st_mtime_ns


def test_rewriting_a_shard_withdraws_its_commit_first(cache, monkeypatch):
    root, data = cache
    monkeypatch.setattr(commits, "write_commit", lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_shards(CacheWriter.open(root), data, shards=[0])
    assert CacheWriter.open(root).pending_shards() == [0]


# ---- resume and repair -----------------------------------------------------------------------------------


def test_create_again_with_equal_key_resumes_pending_shards(tmp_path):
    data = sample_data()
    write_shards(CacheWriter.create(tmp_path / "c", make_key(), make_manifest(), S), data, shards=[0, 2])
    again = CacheWriter.create(tmp_path / "c", make_key(), make_manifest(), S)
    assert again.pending_shards() == [1]
    write_shards(again, data)
    np.testing.assert_array_equal(
        CacheReader(tmp_path / "c").read(tokens(range(N))).hidden, data.astype(np.float16)
    )


def test_missing_shard_file_makes_the_shard_pending(cache):
    root, _ = cache
    (root / "latents.zarr" / "length" / "c" / "2").unlink()
    assert CacheWriter.open(root).pending_shards() == [2]
    assert verify_cache(root).damaged == [(2, "shard file latents.zarr/length/c/2 is missing")]


def test_damaged_shard_found_by_verify_and_full_pending_then_repaired(cache):
    root, data = cache
    path = root / "latents.zarr" / "hidden" / "c" / "1" / "0" / "0" / "0"
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 16)  # same size: only a checksum can tell
    writer = CacheWriter.open(root)
    assert writer.pending_shards() == []
    assert writer.pending_shards(verify=True) == [1]
    report = verify_cache(root)
    assert [s for s, _ in report.damaged] == [1] and "crc32c" in report.damaged[0][1]
    assert report.ok == [0, 2]
    assert writer.invalidate([1]) == [1]
    write_shards(writer, data)
    assert verify_cache(root).damaged == [] and writer.pending_shards(verify=True) == []


def test_malformed_commit_record_counts_as_damaged_and_pending(cache):
    root, _ = cache
    commits.commit_path(root, 0).write_text("{not json")
    assert CacheWriter.open(root).pending_shards() == [0]
    assert verify_cache(root).damaged[0][0] == 0


@pytest.mark.parametrize("size", [0, 1, 7, 4096, 256 * 1024 + 3])
def test_crc32c_is_zarrs_checksum_in_one_go_and_continued(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    want = google_crc32c.value(data.tobytes())  # what zarr's crc32c codec stores
    assert crc32c(data) == want and crc32c(memoryview(data.tobytes())) == want
    assert crc32c(data[size // 3 :], crc32c(data[: size // 3])) == want


# ---- keys, overwrite ----------------------------------------------------------------------------------


def test_create_with_other_key_is_refused_naming_the_field(cache):
    with pytest.raises(CacheKeyMismatchError, match=r"layers: cache has \(0, 2\), asked for \(1,\)"):
        CacheWriter.create(cache[0], make_key(layers=(1,)), make_manifest(), S)


def test_create_with_other_manifest_or_shard_size_is_refused(cache):
    with pytest.raises(CacheKeyMismatchError, match="manifest: cache has 10 samples"):
        CacheWriter.create(cache[0], make_key(), make_manifest(9), S)
    with pytest.raises(CacheKeyMismatchError, match="shard_size: cache has 4, asked for 5"):
        CacheWriter.create(cache[0], make_key(), make_manifest(), 5)


def test_overwrite_replaces_the_cache(cache):
    root, _ = cache
    writer = CacheWriter.create(root, make_key(tokens=1), make_manifest(), S, overwrite=True)
    assert writer.pending_shards() == [0, 1, 2]
    reader = CacheReader(root)
    assert reader.key.tokens == 1 and reader.committed_shards == []


def test_reader_refuses_latents_other_than_the_expected_naming_the_field(cache):
    latent = CacheReader(cache[0]).key.latent_key()
    with pytest.raises(
        CacheKeyMismatchError, match=r"hidden_size: the run was trained with 4096, the latents have 8"
    ):
        CacheReader(cache[0], expect=dataclasses.replace(latent, hidden_size=4096))
    with pytest.raises(CacheKeyMismatchError, match=r"layers: the run was trained on GM layers \[1\]"):
        CacheReader(cache[0], expect=dataclasses.replace(latent, layers=(1,)))
    assert CacheReader(cache[0], expect=dataclasses.replace(latent, layers=(2,))).key.tokens == T


def test_latent_key_ignores_the_gm_name_and_compares_the_weights_hash(cache):
    latent = CacheReader(cache[0]).key.latent_key()
    dataclasses.replace(latent, model="/typed/path/to/gm").check(latent, where="cache")
    with pytest.raises(CacheKeyMismatchError, match="model_hash: the run was trained with 'other'"):
        dataclasses.replace(latent, model_hash="other").check(latent, where="cache")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"compute_dtype": "bfloat16"}, "compute_dtype: cache has 'float32', asked for 'bfloat16'"),
        ({"latents": "teacher-forced"}, "latents: cache has 'generated', asked for 'teacher-forced'"),
        ({"layers": (0, 1, 2)}, r"layers: cache has \(0, 2\), asked for \(0, 1, 2\)"),
        ({"splits": ("val",)}, r"splits: cache has \('train',\), asked for \('val',\)"),
        ({"index_hash": "i1"}, "index_hash: cache has 'i0', asked for 'i1'"),
        ({"code_version": "0.2.0"}, "code_version: cache has '0.1.0', asked for '0.2.0'"),
    ],
)
def test_create_with_other_latents_or_samples_is_refused_naming_the_field(cache, change, message):
    with pytest.raises(CacheKeyMismatchError, match=rf"cache .* was built for something else: {message}"):
        CacheWriter.create(cache[0], make_key(**change), make_manifest(), S)


def test_create_resumes_a_cache_of_the_same_weights_under_another_gm_name(cache):
    writer = CacheWriter.create(cache[0], make_key(model="/typed/path/to/tiny-llava"), make_manifest(), S)
    assert writer.pending_shards() == [] and writer.key == make_key()


def test_key_round_trips_through_its_dict():
    assert CacheKey.from_dict(json.loads(json.dumps(make_key().to_dict()))) == make_key()


def test_key_rejects_unsorted_layers():
    with pytest.raises(ValueError, match="layers must be strictly ascending"):
        make_key(layers=(2, 0))


# ---- the lock -------------------------------------------------------------------------------------------


def test_lock_is_refused_while_held(cache):
    writer = CacheWriter.open(cache[0])
    with writer.lock():
        with pytest.raises(
            CacheLockedError, match=rf"being written by pid {os.getpid()} on host .*remove .*\.lock"
        ):
            with CacheWriter.open(cache[0]).lock():
                pass
    assert not (cache[0] / LOCK_FILE).exists()


def test_overwrite_is_refused_while_a_live_process_holds_the_lock(cache):
    (cache[0] / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(CacheLockedError, match=f"pid {os.getppid()}"):
        CacheWriter.create(cache[0], make_key(tokens=1), make_manifest(), S, overwrite=True)


def test_stale_lock_of_a_dead_process_is_taken_over(cache):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (cache[0] / LOCK_FILE).write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": 1.0})
    )
    with CacheWriter.open(cache[0]).lock():
        assert json.loads((cache[0] / LOCK_FILE).read_text())["pid"] == os.getpid()


# ---- malformed caches -------------------------------------------------------------------------------------


def test_malformed_cache_json_names_the_path(cache):
    (cache[0] / CACHE_JSON).write_text("{")
    with pytest.raises(CacheError, match=r"cache\.json is not readable JSON"):
        CacheReader(cache[0])


def test_other_format_version_is_refused(cache):
    doc = json.loads((cache[0] / CACHE_JSON).read_text())
    doc["format_version"] = 99
    (cache[0] / CACHE_JSON).write_text(json.dumps(doc))
    with pytest.raises(
        CacheError, match=f"format_version 99; this code reads version {CACHE_FORMAT_VERSION} only"
    ):
        CacheReader(cache[0])


@pytest.mark.parametrize(
    "version, what", [(1, "samples without checksums"), (2, "no record of how the GM computed and answered")]
)
def test_cache_of_an_earlier_format_is_refused_saying_how_to_rebuild_it(cache, version, what):
    doc = json.loads((cache[0] / CACHE_JSON).read_text())
    doc["format_version"] = version
    (cache[0] / CACHE_JSON).write_text(json.dumps(doc))
    with pytest.raises(CacheError, match=rf"format_version {version} \({what}\).*--overwrite"):
        CacheReader(cache[0])


def test_malformed_manifest_names_the_path(cache):
    (cache[0] / MANIFEST_FILE).write_bytes(b"not parquet")
    with pytest.raises(CacheError, match=r"manifest\.parquet is not readable Parquet"):
        CacheReader(cache[0])


def test_missing_cache_is_a_missing_path(tmp_path):
    with pytest.raises(MissingPathError, match="does not exist"):
        CacheReader(tmp_path / "nowhere")


def test_wrong_shard_shape_is_refused(tmp_path):
    writer = CacheWriter.create(tmp_path / "c", make_key(), make_manifest(), S)
    with pytest.raises(
        CacheError, match=r"shard 2: hidden has shape \(4, 2, 3, 8\), expected \(2, 2, 3, 8\)"
    ):
        writer.write_shard(2, np.zeros((4, L, T, H)), np.zeros(2, int), np.zeros((2, T - 1), int), [])


# ---- failures ----------------------------------------------------------------------------------------


def test_failures_ledger_from_commit_records(tmp_path):
    data = sample_data()
    data[8:] = 0
    writer = CacheWriter.create(tmp_path / "c", make_key(), make_manifest(), S)
    failed = {"tok001": "CUDA out of memory", "tok008": "image missing", "tok009": "image missing"}
    write_shards(writer, data, failures=failed)  # shard 2 failed entirely: its files must still exist
    writer.finalize()
    reader = CacheReader(tmp_path / "c")
    assert reader.failures() == sorted(failed.items())
    assert "tok001" not in reader and "tok002" in reader
    assert reader.read(tokens([1, 2, 8])).present.tolist() == [False, True, False]
    table = pq.read_table(tmp_path / "c" / FAILURES_FILE).to_pylist()
    assert table == [
        {"sample_token": t, "shard": int(t[3:]) // S, "reason": r} for t, r in sorted(failed.items())
    ]
    assert verify_cache(tmp_path / "c").ok == [0, 1, 2]


def test_failed_sample_must_have_zero_length(tmp_path):
    writer = CacheWriter.create(tmp_path / "c", make_key(), make_manifest(), S)
    with pytest.raises(CacheError, match="failed sample 'tok000' must have length 0"):
        writer.write_shard(
            0, np.zeros((S, L, T, H)), np.full(S, T), np.zeros((S, T - 1), int), [("tok000", "x")]
        )


# ---- info and the CLI -------------------------------------------------------------------------------


def test_cache_info_counts_shards_and_samples(tmp_path):
    writer = CacheWriter.create(tmp_path / "c", make_key(), make_manifest(), S)
    write_shards(writer, sample_data(), shards=[0, 2])
    info = cache_info(tmp_path / "c")
    assert info["shards"] == {"committed": 2, "total": 3, "damaged": 0, "pending": 1}
    assert info["samples_committed"] == 6 and info["bytes_per_sample"] == L * T * H * 2


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    register(app)
    return app


def test_cli_verify_exits_zero_on_a_clean_cache(cache):
    result = CliRunner().invoke(_cli(), ["cache", "verify", str(cache[0])])
    assert result.exit_code == 0, result.output
    assert "3 shards ok, 0 damaged" in result.output


def test_cli_verify_names_each_damaged_shard_and_exits_non_zero(cache):
    (cache[0] / "latents.zarr" / "token_ids" / "c" / "0" / "0").write_bytes(b"junk")
    result = CliRunner().invoke(_cli(), ["cache", "verify", str(cache[0])])
    assert result.exit_code == 1
    assert (
        "damaged shard 0 of" in result.output
        and "re-running the same harvest (without --no-verify) recomputes it" in result.output
    )


def test_cli_info_prints_key_and_counts(cache):
    result = CliRunner().invoke(_cli(), ["cache", "info", str(cache[0])])
    assert result.exit_code == 0, result.output
    assert "tiny-llava" in result.output and "3 of 3 committed" in result.output


def test_reader_refresh_sees_shards_committed_after_it_opened(tmp_path):
    data = sample_data()
    writer = CacheWriter.create(tmp_path / "c", make_key(), make_manifest(), S)
    reader = CacheReader(tmp_path / "c")
    write_shards(writer, data, shards=[1])
    assert "tok004" not in reader
    reader.refresh()
    assert "tok004" in reader


def test_reader_survives_pickling_for_spawned_workers(cache):
    import pickle

    reader = CacheReader(cache[0])
    reader.read(tokens([0]))  # opens a shard file
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read(tokens([0, 9])).hidden, reader.read(tokens([0, 9])).hidden)


def test_repeated_tokens_each_get_the_sample(cache):
    root, data = cache
    batch = CacheReader(root).read(tokens([1, 1, 6]))
    np.testing.assert_array_equal(batch.hidden, data[[1, 1, 6]].astype(np.float16))


# ---- a shard rewritten or damaged under an open reader ------------------------------------------------


def _hidden_file(root: Path, shard: int) -> Path:
    return root / "latents.zarr" / "hidden" / "c" / str(shard) / "0" / "0" / "0"


def _damage_index(path: Path) -> None:
    """Flip bytes inside the shard index at the end of the file (same size: the cheap checks pass)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size - 10)  # the last entry's nbytes field
        f.write(b"\xff\xff")


def test_a_flipped_bit_inside_a_sample_is_one_error_naming_cache_shard_sample_and_repair(cache):
    root, data = cache
    path = _hidden_file(root, 1)  # rows 4..7
    raw = bytearray(path.read_bytes())
    sample_bytes = data[0].astype(np.float16).nbytes
    raw[(sample_bytes + 4) * 2 + 3] ^= 0x10  # inside row 6's data (each sample is followed by its crc32c)
    path.write_bytes(bytes(raw))  # same size: the commit's cheap checks pass
    reader = CacheReader(root)
    np.testing.assert_array_equal(reader.read(tokens([5, 7])).hidden, data[[5, 7]].astype(np.float16))
    with pytest.raises(
        CacheError,
        match=rf"sample tok006 \(row 6\) in shard 1 of cache {root}: its bytes do not match their checksum "
        rf"\(damaged data\); run `netroller cache verify {root}` and re-run the same harvest",
    ):
        reader.read(tokens([5, 6]))


def test_damaged_samples_are_found_and_left_out_on_request(cache):
    root, data = cache
    path = _hidden_file(root, 1)
    raw = bytearray(path.read_bytes())
    raw[(data[0].astype(np.float16).nbytes + 4) * 2 + 3] ^= 0x10  # inside row 6's data
    path.write_bytes(bytes(raw))
    reader = CacheReader(root)
    assert reader.damaged_samples() == tokens([6])
    reader.leave_out(reader.damaged_samples())
    batch = reader.read(tokens([5, 6]))
    assert batch.present.tolist() == [True, False] and tokens([6])[0] not in reader
    assert CacheReader(root, verify=False).read(tokens([6])).present.tolist() == [True]


def test_zarr_python_reads_the_checksummed_arrays(cache):
    root, data = cache
    hidden = zarr.open_array(root / "latents.zarr" / "hidden", mode="r")[:]
    np.testing.assert_array_equal(hidden, data.astype(np.float16))


def test_shard_rewritten_after_it_was_mapped_reads_the_new_bytes(cache):
    root, data = cache
    reader = CacheReader(root)
    reader.read(tokens([1]))  # maps shard 0
    write_shards(CacheWriter.open(root), data + 1, shards=[0])  # a re-run harvest repairs it
    np.testing.assert_array_equal(
        reader.read(tokens([0, 1, 3])).hidden, (data + 1)[[0, 1, 3]].astype(np.float16)
    )


def _settle(root: Path, seconds_ago: float) -> None:
    """Date the commits folder back, as if its last change was long ago."""
    then = int((time.time() - seconds_ago) * 1e9)
    os.utime(root / "commits", ns=(then, then))


def test_rewrite_is_seen_through_the_commits_folder_even_when_it_had_settled(cache):
    root, data = cache
    _settle(root, 60)
    reader = CacheReader(root)
    reader.read(tokens([1]))  # maps shard 0; no shard file is stat-ed again within RECHECK_NS
    write_shards(CacheWriter.open(root), data + 1, shards=[0])
    _settle(root, 30)  # changed since the reader looked, and settled again: only the folder's change shows
    np.testing.assert_array_equal(reader.read(tokens([1])).hidden, (data + 1)[[1]].astype(np.float16))


def test_shard_being_rewritten_under_a_reader_reads_absent_not_old_or_torn(cache, monkeypatch):
    root, data = cache
    reader = CacheReader(root)
    reader.read(tokens([0, 4]))  # maps shards 0 and 1
    monkeypatch.setattr(commits, "write_commit", lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # new files written, never committed
        write_shards(CacheWriter.open(root), data + 1, shards=[1])
    batch = reader.read(tokens([0, 4]))
    assert batch.present.tolist() == [True, False] and not batch.hidden[1].any()
    assert "tok004" not in reader and 1 not in reader.committed_shards


def test_damaged_shard_index_is_refused_naming_the_shard(cache):
    root, _ = cache
    _damage_index(_hidden_file(root, 1))
    reader = CacheReader(root)
    with pytest.raises(
        CacheError, match=r"shard 1 of cache .* is damaged .*shard index checksum does not match"
    ):
        reader.read(tokens([4]))


def test_shard_index_damaged_after_it_was_mapped_is_found_on_the_next_check(cache, monkeypatch):
    from netroller.storage import reader as reader_module

    monkeypatch.setattr(reader_module, "RECHECK_NS", 0)  # every batch checks (by default: once a second)
    root, _ = cache
    reader = CacheReader(root)
    reader.read(tokens([4]))
    path = _hidden_file(root, 1)
    _damage_index(path)
    # File times tick at the kernel's coarse clock: move mtime on so the change shows whatever the timing.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(
        CacheError, match=r"shard 1 of cache .* is damaged .*shard index checksum does not match"
    ):
        reader.read(tokens([4]))


def test_shard_truncated_after_it_was_mapped_is_an_error_not_a_crash(cache, monkeypatch):
    from netroller.storage import reader as reader_module

    monkeypatch.setattr(reader_module, "RECHECK_NS", 0)  # every batch checks (by default: once a second)
    root, _ = cache
    reader = CacheReader(root)
    reader.read(tokens([4]))
    os.truncate(_hidden_file(root, 1), 50)  # reading the old map past the end would be SIGBUS
    with pytest.raises(CacheError, match=r"shard 1 of cache .* is damaged .*has 50 bytes"):
        reader.read(tokens([4]))


def test_reader_reads_right_when_it_keeps_fewer_shards_mapped_than_a_batch_touches(cache, monkeypatch):
    from netroller.storage import reader as reader_module

    monkeypatch.setattr(reader_module, "MAX_MAPPED_SHARDS", 1)
    root, data = cache
    reader = CacheReader(root)
    for _ in range(2):
        np.testing.assert_array_equal(
            reader.read(tokens([9, 0, 5, 1])).hidden, data[[9, 0, 5, 1]].astype(np.float16)
        )
    assert len(reader._maps) == 1


def test_committed_sample_the_index_says_never_written_is_an_error_not_fill_values(cache):

    root, _ = cache
    path = _hidden_file(root, 0)
    raw = bytearray(path.read_bytes())
    entries = S * 16
    table = np.frombuffer(raw[-entries - 4 : -4], dtype="<u8").copy().reshape(S, 2)
    table[1] = 2**64 - 1  # row 1: offset and nbytes "never written", as zarr marks a missing chunk
    body = table.tobytes()
    raw[-entries - 4 :] = body + np.uint32(google_crc32c.value(body)).tobytes()  # a valid index again
    path.write_bytes(bytes(raw))  # same size: the commit's cheap checks pass
    with pytest.raises(
        CacheError, match=r"shard 0 of cache .* is damaged \(sample row 1 was never written\)"
    ):
        CacheReader(root).read(tokens([0]))


def test_shard_rewritten_while_the_reader_maps_it_is_mapped_again(cache, monkeypatch):
    root, data = cache
    reader = CacheReader(root)
    open_files = reader._open_files
    raced = []

    def racing(shard, record):
        mapped = open_files(shard, record)  # the old files
        if not raced:  # a re-run harvest rewrites and commits the shard meanwhile
            raced.append(shard)
            write_shards(CacheWriter.open(root), data + 1, shards=[shard])
        return mapped

    monkeypatch.setattr(reader, "_open_files", racing)
    np.testing.assert_array_equal(reader.read(tokens([0])).hidden[0], (data + 1)[0].astype(np.float16))
