"""The harvest stage, its resume/lock/failure behaviour, its CLI and its Ray edge, on the tiny GM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from PIL import Image

from netroller.data.cameras import load_camera_images
from netroller.data.index import IndexMeta, SampleRecord, bare_record, write_index
from netroller.errors import (
    CacheKeyMismatchError,
    CacheLockedError,
    ConfigError,
    DataError,
    ModelError,
    WorkerError,
)
from netroller.stages.harvest import HarvestConfig, harvest

REPO = Path(__file__).resolve().parent.parent


def _record(token: str, scene: str, frame: int, split: str) -> SampleRecord:
    return bare_record(
        sample_token=token, scene_token=scene, frame_index=frame, split=split, image_size=(32, 24)
    )


def make_index(root: Path, samples: int = 6) -> Path:
    """A tiny index over `samples` keyframes (two scenes, train then val) with 6 random 32x24 JPEGs each."""
    rng = np.random.default_rng(0)
    dataroot = root / "nuscenes"
    records = []
    for i in range(samples):
        scene = "s0" if i < (samples + 1) // 2 else "s1"
        rec = _record(f"tok{i:03d}", scene, i, "train" if scene == "s0" else "val")
        for rel in rec.cam_paths:
            path = dataroot / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path, quality=90)
        records.append(rec)
    return write_index(
        records, root / "index.parquet", IndexMeta(dataroot=str(dataroot), version="v1.0-mini")
    )


@pytest.fixture()
def small_index(tmp_path) -> Path:
    """A fresh index of 6 samples whose images a test may damage."""
    return make_index(tmp_path / "data")


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_gm) -> tuple[Path, Path]:
    """(index, cache): one in-process harvest (T=2, all layers, 3 shards of 2) that tests read or copy."""
    root = tmp_path_factory.mktemp("harvest-base")
    index = make_index(root / "data")
    return index, harvest(_cfg(index, root / "cache", tiny_gm))


def _copy(cache: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(cache, tmp_path / "copy"))


def _cfg(index: Path, out: Path, gm: Path, **kw) -> HarvestConfig:
    """One sample per GM pass unless asked (tests compare rows with a per-sample capture bit for bit)."""
    base = dict(
        index=index, out=out, model=str(gm), tokens=2, shard_size=2, workers=0, progress=False, batch_size=1
    )
    base.update(kw)
    return HarvestConfig(**base)


def _arrays(root: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(root / "latents.zarr", mode="r")
    return {name: np.asarray(group[name][...]) for name in ("hidden", "length", "token_ids")}


def _assert_same_arrays(got: Path, want: Path) -> None:
    a, b = _arrays(got), _arrays(want)
    for name in b:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _commits(root: Path) -> list[Path]:
    return sorted((root / "commits").glob("*.json"))


def test_harvest_rows_equal_direct_capture(base, tiny_gm):
    from netroller.data.index import CAMERAS, read_index
    from netroller.models.gm.capture import LatentCapturer
    from netroller.models.gm.loader import load_gm
    from netroller.models.gm.prompts import PromptSource
    from netroller.storage.reader import CacheReader

    index_path, root = base
    index = read_index(index_path)
    gm = load_gm(str(tiny_gm))
    capturer = LatentCapturer(gm, layers=tuple(range(gm.num_layers)), tokens=2, cameras=CAMERAS)
    prompt = PromptSource.template().default
    batch = CacheReader(root).read([r.sample_token for r in index.records])
    token_ids = _arrays(root)["token_ids"]
    assert batch.present.all()
    for i, rec in enumerate(index.records):
        cap = capturer.capture(load_camera_images(rec, index.dataroot()), prompt)
        np.testing.assert_array_equal(batch.hidden[i], cap.hidden.astype(np.float16))
        assert batch.length[i] == cap.length
        np.testing.assert_array_equal(token_ids[i, : cap.token_ids.shape[0]], cap.token_ids)


def test_resume_recomputes_only_shards_without_commit(base, tiny_gm, tmp_path):
    index, reference = base
    root = _copy(reference, tmp_path)
    kept, *dropped = _commits(root)
    kept_mtime = kept.stat().st_mtime_ns
    for c in dropped:
        c.unlink()
    harvest(_cfg(index, root, tiny_gm))
    assert [c.name for c in _commits(root)] == [c.name for c in _commits(reference)]
    assert kept.stat().st_mtime_ns == kept_mtime  # the committed shard was not rewritten
    _assert_same_arrays(root, reference)


def test_resume_prints_pending_shards(base, tiny_gm, tmp_path, capsys):
    index, reference = base
    root = _copy(reference, tmp_path)
    _commits(root)[-1].unlink()
    harvest(_cfg(index, root, tiny_gm, progress=True))
    assert "6 samples, 1/3 shards pending (2 samples)" in capsys.readouterr().err


def _zero_64_bytes_of_hidden_shard(root: Path, shard: int) -> None:
    """Zero 64 bytes inside a committed hidden shard's sample data (same size: only a re-hash can tell)."""
    shard_file = root / "latents.zarr" / "hidden" / "c" / str(shard) / "0" / "0" / "0"
    data = bytearray(shard_file.read_bytes())
    at = len(data) // 3
    assert any(data[at : at + 64]), "the bytes to zero are already zero"
    data[at : at + 64] = bytes(64)
    shard_file.write_bytes(bytes(data))


def _cli_harvest_argv(index: Path, root: Path, gm: Path, *extra: str) -> list[str]:
    return [
        "harvest", "--index", str(index), "--out", str(root), "--model", str(gm), "--tokens", "2",
        "--shard-size", "2", "--workers", "0", "--batch-size", "1", *extra,
    ]  # fmt: skip


def test_rerun_of_the_same_harvest_repairs_a_damaged_shard_as_cache_verify_says(
    base, tiny_gm, tmp_path, capsys
):
    from netroller.cli.main import main

    index, reference = base
    root = _copy(reference, tmp_path)
    _zero_64_bytes_of_hidden_shard(root, 1)
    assert main(["cache", "verify", str(root)]) == 1
    said = capsys.readouterr().err
    assert f"damaged shard 1 of {root}" in said and "re-running the same harvest" in said
    assert main(_cli_harvest_argv(index, root, tiny_gm)) == 0
    err = capsys.readouterr().err
    assert "1 damaged shard(s) will be recomputed: 1" in err
    assert "1/3 shards pending (2 samples)" in err
    _assert_same_arrays(root, reference)
    assert main(["cache", "verify", str(root)]) == 0


def test_no_verify_trusts_committed_shards_and_says_so(base, tiny_gm, tmp_path, capsys):
    from netroller.cli.main import main

    index, reference = base
    root = _copy(reference, tmp_path)
    _zero_64_bytes_of_hidden_shard(root, 1)
    assert main(_cli_harvest_argv(index, root, tiny_gm, "--no-verify")) == 0
    err = capsys.readouterr().err
    assert "--no-verify: 3 committed shard(s) trusted without re-hashing their bytes" in err
    assert "0/3 shards pending" in err
    assert main(["cache", "verify", str(root)]) == 1


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path, tiny_gm):
    """With sampled answers, so that the resumed shards draw what an uninterrupted run draws."""
    index = make_index(tmp_path / "data", samples=8)
    sampling = dict(decode="sample", temperature=1.0, top_p=0.9, seed=5)
    reference = harvest(_cfg(index, tmp_path / "reference", tiny_gm, shard_size=1, tokens=8, **sampling))
    root = tmp_path / "cache"
    cmd = [sys.executable, "-m", "netroller.cli.main", "harvest", "--index", str(index), "--out", str(root)]
    cmd += ["--model", str(tiny_gm), "--tokens", "8", "--shard-size", "1", "--workers", "0"]
    cmd += ["--decode", "sample", "--temperature", "1.0", "--top-p", "0.9", "--seed", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not _commits(root):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard committed within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert 1 <= len(_commits(root)) < 8, "the run was not interrupted mid-way"
    harvest(_cfg(index, root, tiny_gm, shard_size=1, tokens=8, **sampling))
    _assert_same_arrays(root, reference)


def test_concurrent_second_harvest_is_refused(base, tiny_gm, tmp_path):
    index, reference = base
    root = _copy(reference, tmp_path)
    _commits(root)[-1].unlink()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from netroller.storage.writer import CacheWriter\n"
            "with CacheWriter.open(Path(sys.argv[1])).lock():\n    print('locked', flush=True); time.sleep(60)",
            str(root),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(CacheLockedError, match="being written by pid"):
            harvest(_cfg(index, root, tiny_gm))
    finally:
        holder.kill()
        holder.wait()
    assert len(_commits(root)) == 2  # nothing was written under someone else's lock


def test_different_key_is_refused_naming_the_field(base, tiny_gm):
    index, root = base
    with pytest.raises(CacheKeyMismatchError, match="tokens: cache has 2, asked for 3"):
        harvest(_cfg(index, root, tiny_gm, tokens=3))


def test_overwrite_replaces_a_cache_with_a_different_key(base, tiny_gm, tmp_path):
    from netroller.storage.reader import CacheReader

    index, reference = base
    root = _copy(reference, tmp_path)
    harvest(_cfg(index, root, tiny_gm, tokens=3, overwrite=True))
    reader = CacheReader(root)
    assert reader.key.tokens == 3
    assert reader.read(["tok000"]).hidden.shape[2] == 3


def test_batched_generation_matches_one_at_a_time(base, tiny_gm, tmp_path):
    index, reference = base
    root = harvest(_cfg(index, tmp_path / "batched", tiny_gm, batch_size=2))
    got, want = _arrays(root), _arrays(reference)
    np.testing.assert_array_equal(got["length"], want["length"])
    # Batched and single forwards sum in different orders, so every entry's error is of the order of its
    # vector's largest magnitude (tens here), not of its own: the bound is relative to that scale. fp16 has
    # an 11-bit significand (4.9e-4); a few of its ulps at the vector's scale are allowed.
    a, b = got["hidden"].astype(np.float32), want["hidden"].astype(np.float32)  # [N, L, T, H]
    scale = np.abs(b).max(axis=-1, keepdims=True)
    assert float((np.abs(a - b) / np.maximum(scale, 1e-6)).max()) < 4e-3


def test_unreadable_image_goes_to_failures_ledger(small_index, tiny_gm, tmp_path):
    from netroller.storage.reader import CacheReader

    dataroot = small_index.parent / "nuscenes"
    (dataroot / "samples" / "CAM_BACK" / "tok001.jpg").write_bytes(b"not a jpeg")
    (dataroot / "samples" / "CAM_FRONT" / "tok004.jpg").unlink()
    root = harvest(_cfg(small_index, tmp_path / "cache", tiny_gm))
    reader = CacheReader(root)
    failures = dict(reader.failures())
    assert set(failures) == {"tok001", "tok004"}
    assert "CAM_BACK" in failures["tok001"] and "CAM_FRONT" in failures["tok004"]
    batch = reader.read([f"tok{i:03d}" for i in range(6)])
    assert batch.present.tolist() == [True, False, True, True, False, True]
    assert batch.length[1] == 0 and not batch.hidden[1].any()


def test_missing_model_is_refused_before_any_cache_folder(base, tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(ModelError, match="no-such-model"):
        harvest(_cfg(base[0], out, tmp_path / "no-such-model"))
    assert not out.exists()


def test_layer_out_of_range_is_refused_before_any_cache_folder(base, tiny_gm, tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(ConfigError, match="layer 99 is out of range"):
        harvest(_cfg(base[0], out, tiny_gm, layers="0,99"))
    assert not out.exists()


def test_zero_tokens_is_refused(base, tiny_gm, tmp_path):
    with pytest.raises(ConfigError, match="tokens must be an integer >= 1, got 0"):
        _cfg(base[0], tmp_path / "cache", tiny_gm, tokens=0)


def test_index_without_needed_columns_is_refused_before_any_cache_folder(tiny_gm, tmp_path):
    index = tmp_path / "index.parquet"
    pq.write_table(pa.table({"sample_token": ["a"]}), index)
    out = tmp_path / "cache"
    with pytest.raises(DataError, match="index.parquet"):
        harvest(_cfg(index, out, tiny_gm))
    assert not out.exists()


def test_cli_harvest_writes_a_cache(base, tiny_gm, tmp_path):
    from netroller.cli.main import main

    out = tmp_path / "cache"
    argv = ["harvest", "--index", str(base[0]), "--out", str(out), "--model", str(tiny_gm)]
    assert main([*argv, "--tokens", "1", "--layers", "-1", "--shard-size", "4", "--workers", "0"]) == 0
    assert len(_commits(out)) == 2
    assert (out / "failures.parquet").is_file()


def test_cli_bad_layers_exit_2_with_one_line(base, tiny_gm, tmp_path, capsys):
    from netroller.cli.main import main

    argv = ["harvest", "--index", str(base[0]), "--out", str(tmp_path / "c"), "--model", str(tiny_gm)]
    assert main([*argv, "--layers", "0,99", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: layer 99 is out of range")


def test_ray_two_workers_match_in_process(base, tiny_gm, tmp_path, ray_local):
    index, reference = base
    root = harvest(_cfg(index, tmp_path / "ray", tiny_gm, workers=2))
    _assert_same_arrays(root, reference)
    assert len(_commits(root)) == 3


def test_tiny_cache_fixture_holds_every_index_sample(tiny_cache, index_path):
    from netroller.data.index import read_index
    from netroller.storage.reader import CacheReader

    reader = CacheReader(tiny_cache)
    tokens = [r.sample_token for r in read_index(index_path).records if r.split in ("train", "val")]
    assert reader.read(tokens).present.all()


def test_prompt_text_is_part_of_the_cache_key(base, tiny_gm):
    index, root = base
    with pytest.raises(CacheKeyMismatchError, match="prompt_hash"):
        harvest(_cfg(index, root, tiny_gm, prompt="Is the road ahead clear?"))


def test_ray_worker_failure_names_the_shard_and_keeps_committed_ones(base, tiny_gm, tmp_path, ray_local):
    from netroller.data.index import read_index
    from netroller.distributed.ray_harvest import run_shards
    from netroller.stages.harvest import ShardJob, plan_harvest

    index_path, reference = base
    root = _copy(reference, tmp_path)
    for c in _commits(root):
        c.unlink()
    index = read_index(index_path)
    plan = plan_harvest(_cfg(index_path, root, tiny_gm))
    job = ShardJob(root=root, capture=plan.capture, dataroot=index.dataroot(), batch_size=1)
    work = [(0, plan.rows[0:2]), (1, plan.rows[0:1])]  # shard 1 has 2 rows: its unit is malformed
    with pytest.raises(WorkerError, match="failed on shard 1: CacheError.*re-run the same harvest to resume"):
        run_shards(job.load, work, workers=1)
    assert [c.name for c in _commits(root)] == ["000000.json"]


# --- how the GM computes and answers ---------------------------------------------------------------


def _qa_file(path: Path, answers: dict[str, str]) -> Path:
    """A DriveLM file with one planning question per sample token, answered as given."""
    import json

    frames = {
        token: {"QA": {"planning": [{"Q": "What should the ego vehicle do next?", "A": answer}]}}
        for token, answer in answers.items()
    }
    path.write_text(json.dumps({"s0": {"key_frames": frames}}))
    return path


def test_the_driver_never_loads_the_weights(small_index, tiny_gm, tmp_path):
    """A GM whose weight file cannot be deserialised still gets planned (its key from the config and the
    file bytes); only the process that computes loads it, and fails with one line."""
    from netroller.models.gm.loader import weights_hash
    from netroller.stages.harvest import plan_harvest

    gm = Path(shutil.copytree(tiny_gm, tmp_path / "gm"))
    weights = next(gm.glob("*.safetensors"))
    weights.write_bytes(b"\0" * weights.stat().st_size)
    cfg = _cfg(small_index, tmp_path / "cache", gm)
    plan = plan_harvest(cfg)
    assert plan.key.model_hash == weights_hash(gm) and plan.key.compute_dtype == "float32"
    with pytest.raises(ModelError, match="cannot load the model from"):
        harvest(cfg)


def test_teacher_forced_harvest_reads_the_answers(small_index, tiny_gm, tmp_path):
    from netroller.data.index import CAMERAS, read_index
    from netroller.models.gm.capture import LatentCapturer
    from netroller.models.gm.loader import load_gm
    from netroller.stages.harvest import NO_ANSWER
    from netroller.storage.reader import CacheReader

    answers = {"tok000": "Keep going straight at the current speed.", "tok001": "Stop."}
    qa = _qa_file(tmp_path / "qa.json", answers)
    root = harvest(
        _cfg(small_index, tmp_path / "cache", tiny_gm, tokens=6, drivelm=qa, latents="teacher-forced")
    )
    reader = CacheReader(root)
    assert (reader.key.latents, reader.key.decode) == ("teacher-forced", "none")
    assert dict(reader.failures()) == {f"tok{i:03d}": NO_ANSWER for i in range(2, 6)}
    index = read_index(small_index)
    capturer = LatentCapturer(
        load_gm(tiny_gm), layers="all", tokens=6, cameras=CAMERAS, latents="teacher-forced"
    )
    batch = reader.read(list(answers))
    for i, (token, answer) in enumerate(answers.items()):
        images = load_camera_images(index[token], index.dataroot())
        cap = capturer.capture(images, "What should the ego vehicle do next?", answer=answer)
        assert batch.length[i] == cap.length
        np.testing.assert_array_equal(batch.hidden[i], cap.hidden.astype(np.float16))


def test_sampled_harvest_is_identical_across_runs_and_a_resume(small_index, tiny_gm, tmp_path):
    kw = dict(tokens=5, decode="sample", temperature=1.0, top_p=0.9, seed=7)
    first = harvest(_cfg(small_index, tmp_path / "a", tiny_gm, **kw))
    second = harvest(_cfg(small_index, tmp_path / "b", tiny_gm, **kw))
    _assert_same_arrays(second, first)
    for commit in _commits(second)[1:]:  # as a run killed after its first shard leaves it
        commit.unlink()
    harvest(_cfg(small_index, second, tiny_gm, **kw))
    _assert_same_arrays(second, first)
    # In batches of 3 the same tokens are drawn (the hidden states differ by padding's float noise only).
    batched = harvest(_cfg(small_index, tmp_path / "c", tiny_gm, batch_size=3, **kw))
    np.testing.assert_array_equal(_arrays(batched)["token_ids"], _arrays(first)["token_ids"])
    greedy = harvest(_cfg(small_index, tmp_path / "g", tiny_gm, tokens=5))
    assert not np.array_equal(_arrays(greedy)["token_ids"], _arrays(first)["token_ids"])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"latents": "teacher-forced"}, "teacher-forced latents need the answers of a DriveLM file"),
        ({"latents": "answered"}, "latents must be one of generated, teacher-forced"),
        ({"top_p": 0.0}, r"top-p must lie in \(0, 1\]"),
        ({"decode": "beam"}, "decode must be one of greedy, sample"),
    ],
)
def test_bad_gm_settings_are_refused_before_anything_is_written(small_index, tiny_gm, tmp_path, kw, message):
    with pytest.raises(ConfigError, match=message):
        harvest(_cfg(small_index, tmp_path / "cache", tiny_gm, **kw))
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"prompt_format": "xml"}, "prompt format must be one of auto, chat, alpaca, got 'xml'"),
        ({"prompt_format": "chat"}, "prompt format 'chat' needs a chat template"),
        ({"gm_dtype": "int8"}, "GM dtype must be one of float32, float16, bfloat16, got 'int8'"),
        ({"attn_implementation": "magic"}, "attention implementation must be one of"),
    ],
)
def test_bad_prompt_or_gm_settings_name_the_value(small_index, tiny_gm, tmp_path, kw, message):
    with pytest.raises(ConfigError, match=message):
        harvest(_cfg(small_index, tmp_path / "cache", tiny_gm, **kw))
    assert not (tmp_path / "cache").exists()


def test_the_gm_settings_are_part_of_the_cache_key(base, tiny_gm):
    index, root = base
    with pytest.raises(CacheKeyMismatchError, match="compute_dtype"):
        harvest(_cfg(index, root, tiny_gm, gm_dtype="bfloat16"))
    with pytest.raises(CacheKeyMismatchError, match="decode"):
        harvest(_cfg(index, root, tiny_gm, decode="sample"))
    with pytest.raises(CacheKeyMismatchError, match="attn_implementation"):
        harvest(_cfg(index, root, tiny_gm, attn_implementation="eager"))


def test_several_questions_per_sample_are_rows_of_their_own(small_index, tiny_gm, tmp_path, capsys):
    import json

    from netroller.data.index import CAMERAS, read_index
    from netroller.models.gm.capture import LatentCapturer
    from netroller.models.gm.loader import load_gm
    from netroller.storage.reader import CacheReader

    qa = {
        "perception": [{"Q": "What is ahead?", "A": "A bus."}, {"Q": "Anyone behind?", "A": "No."}],
        "planning": [{"Q": "What should the ego vehicle do next?", "A": "Slow down."}],
    }
    path = tmp_path / "qa.json"
    path.write_text(json.dumps({"s0": {"key_frames": {"tok000": {"QA": qa}}}}))
    cfg = _cfg(small_index, tmp_path / "cache", tiny_gm, drivelm=path, questions="all", progress=True)
    root = harvest(cfg)
    assert "6 samples asked 8 questions (all)" in capsys.readouterr().err
    reader = CacheReader(root)
    assert reader.key.questions == "all" and len(reader) == 8
    assert reader.categories("tok000") == ("planning", "perception", "perception")
    assert reader.categories("tok001") == ("template",)
    batch = reader.read(["tok000", "tok000", "tok000", "tok001"], [0, 1, 2, 1])
    assert batch.present.tolist() == [True, True, True, False]  # tok001 was asked one question only
    index = read_index(small_index)
    images = load_camera_images(index["tok000"], index.dataroot())
    capturer = LatentCapturer(load_gm(tiny_gm), layers="all", tokens=2, cameras=CAMERAS)
    for q, question in enumerate(
        ["What should the ego vehicle do next?", "What is ahead?", "Anyone behind?"]
    ):
        cap = capturer.capture(images, question)
        np.testing.assert_array_equal(batch.hidden[q], cap.hidden.astype(np.float16))


def test_questions_beyond_one_need_a_drivelm_file(small_index, tiny_gm, tmp_path):
    with pytest.raises(ConfigError, match="--questions per-category needs a DriveLM file's questions"):
        harvest(_cfg(small_index, tmp_path / "cache", tiny_gm, questions="per-category"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt-format", "xml"], "prompt format must be one of auto, chat, alpaca, got 'xml'"),
        (["--latents", "teacher-forced"], "teacher-forced latents need the answers of a DriveLM file"),
        (["--decode", "sample", "--top-p", "1.5"], r"top-p must lie in (0, 1], got 1.5"),
    ],
)
def test_cli_bad_gm_settings_are_one_line(small_index, tiny_gm, tmp_path, capsys, args, message):
    from netroller.cli.main import main

    out = tmp_path / "cache"
    argv = [
        "harvest",
        "--index",
        str(small_index),
        "--out",
        str(out),
        "--model",
        str(tiny_gm),
        "--workers",
        "0",
    ]
    assert main([*argv, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists()
