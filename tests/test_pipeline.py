"""`netroller pipeline`: the whole flow at toy size, then a re-run that skips every finished step."""

from __future__ import annotations

import dataclasses
import json

import pytest

from netroller.errors import ConfigError
from netroller.pipeline.recipe import PipelineConfig, smoke
from netroller.pipeline.run import plan, run_pipeline


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline") / "work"
    lines: list[str] = []
    report = run_pipeline(smoke(work), log=lines.append)
    return work, report, lines


def test_pipeline_writes_the_comparison_report(smoke_run):
    work, report, _ = smoke_run
    text = report.read_text()
    assert "random-weight stand-in" in text and "synthetic" in text
    # The fine-tunes train at the recipe's lag (1 in smoke) and policy: that is their own row.
    lines = text.splitlines()
    table = lines.index(next(line for line in lines if line.startswith("| run | kind |")))
    assert lines[table + 2].startswith("| no model: per-command mean of the training futures | reference |")
    for row in (
        "| baseline | baseline |",
        "| bias-query (lag1-annotated) | netroller |",
        "| tf-query (lag1-annotated) | netroller |",
        "| bias-query (lag1-annotated-shuffled) | control |",
        "| bias-query | lag 0 |",
        "| bias-query-llama-adapter (lag1-annotated) | netroller |",  # the second GM backend, end to end
    ):
        assert row in text
    la_key = json.loads((work / "cache-llama-adapter" / "cache.json").read_text())["key"]
    assert la_key["backend"] == "llama-adapter" and la_key["model_stand_in"]
    assert (work / "report_plots" / "planning.png").is_file()
    timings = json.loads((work / "pipeline.json").read_text())
    assert set(timings["seconds_by_step"]) == {s.name for s in plan(smoke(work))}


def test_report_has_the_positive_control_rows_labelled_as_a_check(smoke_run):
    work, report, _ = smoke_run
    text = report.read_text()
    check = "[privileged latents: a check of the pipeline, not a result]"
    for row in (
        f"| privileged-bias-query {check} | privileged |",
        f"| privileged-bias-query (shuffled) {check} | privileged control |",
        f"| privileged-bias-query (lag1) {check} | privileged lag 1 |",
    ):
        assert row in text
    run_report = (work / "runs" / "privileged-bias-query" / "eval" / "report.md").read_text()
    assert "Privileged latents: a check of the pipeline, not a result." in run_report
    assert "privileged" not in (work / "runs" / "bias-query" / "eval" / "report.md").read_text().lower()


def test_privileged_qa_keeps_only_the_question_that_states_the_future(smoke_run):
    work, _, _ = smoke_run
    qa = json.loads((work / "privileged_qa.json").read_text())
    frames = [f for scene in qa.values() for f in scene["key_frames"].values()]
    assert frames and all(list(f["QA"]) == ["planning"] and len(f["QA"]["planning"]) == 1 for f in frames)
    answer = frames[0]["QA"]["planning"][0]["A"]
    assert answer.startswith("In 3 seconds the ego vehicle will be ") and " m/s" in answer


def test_privileged_answers_state_the_future_in_whole_metres(smoke_run):
    """The answer's 3 s position is the record's ground-truth one (lidar frame: x right, y ahead; the lidar
    sits near the ego frame's origin), rounded to whole metres."""
    import re

    import numpy as np

    from netroller.data.index import read_index

    work, _, _ = smoke_run
    records = {r.sample_token: r for r in read_index(work / "index.parquet").records}
    qa = json.loads((work / "privileged_qa.json").read_text())
    pattern = re.compile(
        r"In 3 seconds the ego vehicle will be (\d+) m ahead and (\d+) m to the (left|right), driving at "
        r"(\d+) m/s; after 1 and 2 seconds at \(-?\d+, -?\d+\) and \(-?\d+, -?\d+\)\."
    )
    checked = 0
    for scene in qa.values():
        for token, frame in scene["key_frames"].items():
            m = pattern.fullmatch(frame["QA"]["planning"][0]["A"])
            assert m, frame["QA"]["planning"][0]["A"]
            r = records[token]
            if not np.all(r.ego_fut_mask > 0.5):
                continue
            ahead, side = int(m[1]), (1 if m[3] == "left" else -1) * int(m[2])
            assert abs(ahead - r.ego_fut_traj[-1, 1]) < 1.5 and abs(side + r.ego_fut_traj[-1, 0]) < 1.5
            checked += 1
    assert checked


def test_second_run_skips_every_step(smoke_run):
    work, _, _ = smoke_run
    lines: list[str] = []
    run_pipeline(smoke(work), log=lines.append)
    steps = [ln for ln in lines if ln.startswith("[")]
    assert steps and all(ln.endswith("up to date") for ln in steps)


def test_changed_setting_reruns_only_what_depends_on_it(smoke_run):
    work, _, _ = smoke_run
    cfg = dataclasses.replace(smoke(work), lags=(0, 1, 2))
    lines: list[str] = []
    run_pipeline(cfg, log=lines.append)
    ran = {ln.split()[1].rstrip(":") for ln in lines if ln.startswith("[") and ln.endswith("...")}
    assert ran == {"eval-bias-query-eval-lag2-annotated", "report"}


def test_bad_pipeline_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="variants need distinct names"):
        dataclasses.replace(PipelineConfig(work=tmp_path), variants=(smoke().variants[0],) * 2)


def test_half_built_step_from_other_settings_starts_over(smoke_run):
    work, report, _ = smoke_run
    stamps = work / ".stamps"
    (stamps / "report.json").unlink()
    (stamps / "report.running.json").write_text(json.dumps({"fingerprint": "other settings"}))
    report.write_text("half-written by a killed run with other settings")
    lines: list[str] = []
    run_pipeline(smoke(work), log=lines.append)
    ran = [ln for ln in lines if ln.startswith("[") and ln.endswith("...")]
    assert len(ran) == 1 and "report" in ran[0]
    assert "| baseline | baseline |" in report.read_text()
    assert not (stamps / "report.running.json").exists()
