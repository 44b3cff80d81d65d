"""The reliability suite: real faults (SIGKILL, damaged bytes, a full disk, damaged images, hostile files and
arguments) and the recovery the design promises. The long version is `make chaos` (netroller.tools.chaos),
which runs the same fault functions with more trials, real `python -m` start-ups and Ray workers."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from netroller.data.index import CAMERAS, read_index, write_index
from netroller.tools import chaos

KILL_TRIALS = 5


@pytest.fixture(scope="module")
def setup(index_path, tiny_gm, tmp_path_factory) -> chaos.HarvestSetup:
    """The val split (8 samples) harvested uninterrupted: T=4, 4 shards of 2; what every trial compares with."""
    return chaos.make_setup(index_path, tiny_gm, tmp_path_factory.mktemp("chaos"), tokens=4, splits="val")


# ---- kill -9 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trial", range(KILL_TRIALS))
def test_sigkilled_harvest_leaves_only_whole_shards_and_resumes_to_the_same_arrays(setup, tmp_path, trial):
    r = chaos.harvest_kill_trial(setup, tmp_path / "cache", trial=trial, seed=0, launcher="fork")
    assert r.facts["damaged_after_kill"] == []
    assert r.passed, r.detail
    assert r.samples_lost == 0


def test_second_harvest_while_one_runs_is_refused_in_one_line(setup, tmp_path):
    r = chaos.harvest_kill_trial(
        setup, tmp_path / "cache", trial=KILL_TRIALS, seed=0, launcher="fork", probe_second_harvest=True
    )
    probe = r.facts["second_harvest"]
    assert probe["exit"] == 2
    assert len(probe["errors"]) == 1 and "is being written by pid" in probe["errors"][0]
    assert r.passed, r.detail


def test_train_killed_after_its_first_checkpoint_resumes_to_the_same_losses(vad_index, tmp_path):
    r = chaos.train_kill_trial(vad_index, tmp_path / "train", launcher="subprocess", epochs=3)
    assert r.facts["epochs_before_kill"] < 3
    assert r.passed, r.detail


# ---- damaged bytes, full disk, hostile cache files -------------------------------------------------------


@pytest.mark.parametrize("index_bytes", [False, True], ids=["data-bytes", "shard-index-bytes"])
def test_damaged_shard_is_named_by_verify_and_repaired_by_the_same_harvest_rerun(
    setup, tmp_path, index_bytes
):
    r = chaos.damaged_shard_trial(setup, tmp_path / "cache", trial=0, seed=0, index_bytes=index_bytes)
    assert r.facts["verify_exit"] == 1 and r.facts["rerun_said_recomputed"]
    assert r.passed, r.detail


@pytest.mark.parametrize("trial", [0, 1, 2])
def test_a_bit_flipped_inside_sample_data_is_caught_by_the_reader_and_repaired(setup, tmp_path, trial):
    r = chaos.sample_bitflip_trial(setup, tmp_path / "cache", trial=trial, seed=0)
    assert r.facts["caught"] == 1 and r.facts["silently_wrong"] == 0
    assert r.passed, r.detail


def test_full_disk_fails_in_one_line_without_committing_and_resumes(setup, tmp_path):
    r = chaos.disk_full_trial(setup, tmp_path / "tmpfs")
    if r.skipped:
        pytest.skip(r.detail)
    assert len(r.facts["errors"]) == 1 and "No space left on device" in r.facts["errors"][0]
    assert 0 < r.facts["committed_when_full"] < setup.num_shards
    assert r.passed, r.detail


@pytest.mark.parametrize("kind", chaos.HOSTILE_KINDS)
def test_malformed_cache_file_is_refused_by_every_command_and_left_untouched(setup, tmp_path, kind):
    r = chaos.hostile_cache_trial(setup, tmp_path / "cache", tmp_path / "run", kind=kind)
    assert r.passed, r.detail


# ---- damaged camera images -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged(synth_root, index_path, tiny_gm, tmp_path_factory) -> dict:
    """A copy of the dataset with 1 train and 3 val samples damaged (truncated JPEG, garbage bytes, missing
    file), its index, and a harvest of it (T=1, shards of 8)."""
    from netroller.stages.harvest import HarvestConfig, harvest

    root = tmp_path_factory.mktemp("damaged")
    data = Path(shutil.copytree(synth_root, root / "nuscenes"))
    index = read_index(index_path)
    train = index.split("train")
    val = index.split("val")
    damage = {
        train[1].sample_token: ("truncate", 0),
        val[0].sample_token: ("truncate", 1),
        val[3].sample_token: ("garbage", 3),
        val[6].sample_token: ("delete", 5),
    }
    for rec in index.records:
        if rec.sample_token in damage:
            how, cam = damage[rec.sample_token]
            path = data / rec.cam_paths[cam]
            if how == "truncate":
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            elif how == "garbage":
                path.write_bytes(b"\x00not a jpeg" * 100)
            else:
                path.unlink()
    meta = dataclasses.replace(index.meta, dataroot=str(data))
    new_index = write_index(index.records, root / "index.parquet", meta)
    cfg = HarvestConfig(
        index=new_index, out=root / "cache", model=str(tiny_gm), shard_size=8, workers=0, progress=False
    )
    return {"index": new_index, "cache": harvest(cfg), "damaged": damage, "data": data, "intact": synth_root}


def test_harvest_ledgers_damaged_images_and_cache_info_counts_them(damaged):
    ledger = pq.read_table(damaged["cache"] / "failures.parquet").to_pydict()
    assert set(ledger["sample_token"]) == set(damaged["damaged"])
    code, out, _ = chaos.run_cli(["cache", "info", damaged["cache"], "--json"])
    assert code == 0 and json.loads(out)["samples_failed"] == 4


def test_dataset_leaves_out_samples_with_unreadable_images_naming_each(damaged):
    from netroller.data.dataset import SampleDataset
    from netroller.models.vad.config import debug

    ds = SampleDataset(read_index(damaged["index"]), "val", vad=debug(), train=False)
    reasons = dict(ds.unreadable)
    assert len(ds) == 5 and len(reasons) == 3
    missing = next(t for t, (how, _) in damaged["damaged"].items() if how == "delete")
    assert reasons[missing].startswith("camera image not found:") and CAMERAS[5] in reasons[missing]
    assert all("not a readable image" in r for t, r in reasons.items() if t != missing)


def test_all_unreadable_split_is_one_clear_error(damaged, tmp_path):
    from netroller.data.dataset import SampleDataset
    from netroller.errors import DataError
    from netroller.models.vad.config import debug

    with pytest.raises(DataError, match="no sample of split 'val' has readable camera images, e.g. camera"):
        SampleDataset(read_index(damaged["index"]), "val", vad=debug(), train=False, dataroot=tmp_path)


@pytest.fixture(scope="module")
def run_without_some_latents(damaged, tmp_path_factory) -> Path:
    """`train --cache` of the damaged harvest, the SM reading the intact dataset (--dataroot)."""
    out = tmp_path_factory.mktemp("runs") / "nr"
    argv = ["train", "--index", damaged["index"], "--out", out, "--cache", damaged["cache"]]
    argv += ["--dataroot", damaged["intact"], "--epochs", "1", "--max-samples", "3", "--lr", "1e-3"]
    code, _, err = chaos.run_cli(argv)
    assert code == 0, err
    return out


def test_train_with_cache_goes_on_and_logs_samples_without_latents(run_without_some_latents):
    run = json.loads((run_without_some_latents / "metrics.jsonl").read_text().splitlines()[0])
    assert run["kind"] == "run" and run["samples"] == 3
    assert run["samples_without_latents"] == 1 and run["failed_in_harvest"] == 1
    assert run["samples_unreadable"] == 0


def test_eval_goes_on_and_reports_samples_without_latents(run_without_some_latents, damaged):
    argv = [
        "eval",
        "--run",
        run_without_some_latents,
        "--index",
        damaged["index"],
        "--cache",
        damaged["cache"],
    ]
    code, _, err = chaos.run_cli([*argv, "--dataroot", damaged["intact"], "--num-plots", "0"])
    assert code == 0, err
    metrics = json.loads((run_without_some_latents / "eval" / "metrics.json").read_text())
    assert metrics["samples_without_latents"] == 3 and metrics["num_samples"] == 8


# ---- hostile paths and arguments -------------------------------------------------------------------------


def test_path_with_spaces_and_unicode_works_from_synth_to_harvest(tiny_gm, tmp_path):
    work = tmp_path / "wörk dir"
    data, index, cache = work / "nü scenes", work / "ïndex file.parquet", work / "ca che"
    steps = [
        [
            "data",
            "synth",
            "--out",
            data,
            "--scenes",
            "2",
            "--samples-per-scene",
            "2",
            "--width",
            "64",
            "--height",
            "36",
        ],
        ["prepare", "--dataroot", data, "--version", "v1.0-mini", "--out", index],
        [
            "harvest",
            "--index",
            index,
            "--out",
            cache,
            "--model",
            tiny_gm,
            "--workers",
            "0",
            "--shard-size",
            "2",
        ],
        ["cache", "verify", cache],
    ]
    for argv in steps:
        code, _, err = chaos.run_cli(argv)
        assert code == 0, f"{argv[:2]}: {err[-500:]}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt", ""], "prompt template must not be empty"),
        (["--prompt", "   "], "prompt template must not be empty"),
        (["--drivelm", "EMPTY"], "is not valid JSON"),
        (["--drivelm", "NO_QUESTIONS"], "holds no questions"),
    ],
)
def test_empty_prompt_or_drivelm_file_is_one_clear_error(setup, tmp_path, extra, message):
    (tmp_path / "EMPTY").write_text("")
    (tmp_path / "NO_QUESTIONS").write_text("{}")
    extra = [str(tmp_path / e) if e in ("EMPTY", "NO_QUESTIONS") else e for e in extra]
    out = tmp_path / "cache"
    code, _, err = chaos.run_cli(setup.argv(out, extra=tuple(extra)))
    errors = chaos.error_lines(err)
    assert code == 2 and len(errors) == 1 and message in errors[0]
    assert not out.exists()
