"""The planner without a model: the per-command mean of the training futures, and its report row."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from netroller.data.index import read_index
from netroller.errors import DataError
from netroller.metrics.planning import PlanningSample, plan_l2
from netroller.metrics.reference import REFERENCE_LABEL, command_means, reference_metrics


def _with(record, command: int, x: float, full: bool = True):
    fut = np.stack([np.full(6, x), np.arange(1, 7, dtype=np.float64)], 1).astype(np.float32)
    mask = np.ones(6, np.float32) if full else np.array([1, 1, 1, 0, 0, 0], np.float32)
    return dataclasses.replace(record, command=command, ego_fut_traj=fut, ego_fut_mask=mask)


def test_the_mean_future_of_each_command_over_the_full_futures_only(vad_index):
    r = read_index(vad_index).split("train")[0]
    train = [_with(r, 0, 1.0), _with(r, 0, 3.0), _with(r, 2, -4.0), _with(r, 2, 100.0, full=False)]
    means, overall = command_means(train)
    assert sorted(means) == [0, 2]
    np.testing.assert_allclose(means[0][:, 0], 2.0)
    np.testing.assert_allclose(means[2][:, 0], -4.0)  # the partial future is left out
    np.testing.assert_allclose(overall[:, 0], 0.0)
    np.testing.assert_allclose(means[0][:, 1], np.arange(1, 7))


def test_no_training_future_is_refused(vad_index):
    r = read_index(vad_index).split("train")[0]
    with pytest.raises(DataError, match="no training sample has all 6 future keyframes"):
        command_means([_with(r, 2, 0.0, full=False)])


def test_reference_metrics_score_the_mean_future_as_every_evaluation_does(vad_index):
    index = read_index(vad_index)
    means, overall = command_means(index.split("train"))
    val = index.split("val")
    expected = plan_l2([PlanningSample.of(r, means.get(r.command, overall)) for r in val])
    got = reference_metrics(index, "val")
    for n in (1, 2, 3):
        assert got[f"plan_l2_{n}s"] == pytest.approx(expected[f"plan_l2_{n}s"], abs=1e-6)
        assert got[f"plan_l2_{n}s"] > 0  # the val futures differ from the train mean here
        assert 0.0 <= got[f"plan_col_{n}s"] <= 100.0
    assert got["num_samples"] == len(val) and got["reference_planner"] == REFERENCE_LABEL
    assert reference_metrics(index, "val", max_samples=1)["num_samples"] == 1


def test_report_with_an_index_starts_with_the_reference_row(vad_index, tmp_path):
    from netroller.stages.report import Row, table

    row = Row("reference", "eval", "reference", 0, reference_metrics(read_index(vad_index), "val"))
    text = table([row])
    assert text.splitlines()[2].startswith(f"| {REFERENCE_LABEL} | reference | ")
