"""The eval stage end to end on a tiny trained run, and its refusals."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from netroller.errors import ConfigError, ModelError
from netroller.stages.evaluate import EvalConfig, evaluate


@pytest.fixture(scope="module")
def tiny_run(index_path, tmp_path_factory):
    """VAD `debug` trained for 1 epoch on 2 train samples."""
    from netroller.stages.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    return train(
        TrainConfig(index=index_path, out=out, recipe="debug", epochs=1, batch_size=2, max_samples=2)
    )


@pytest.fixture(scope="module")
def evaluated(tiny_run, index_path):
    """One evaluation of 3 val samples, 1 plotted."""
    return evaluate(EvalConfig(run=tiny_run, index=index_path, max_samples=3, num_plots=1))


def test_evaluate_writes_every_output_into_the_eval_folder(evaluated, tiny_run):
    assert evaluated == tiny_run / "eval"
    for name in ("metrics.json", "predictions.parquet", "results_nusc.json", "report.md"):
        assert (evaluated / name).is_file(), name
    assert sorted(p.name for p in (evaluated / "plots").iterdir()) == ["bev_0.png", "cam_front_0.png"]


def test_metrics_json_holds_the_flat_keys_and_vads_own_names(evaluated):
    from netroller.metrics.scoring import VAD_KEYS

    metrics = json.loads((evaluated / "metrics.json").read_text())
    for n in (1, 2, 3):
        for key in (f"plan_l2_{n}s", f"plan_l2_at_{n}s", f"plan_col_{n}s", f"plan_col_exact_{n}s"):
            assert key in metrics, key
    for key in ("det_nds", "det_map", "map_ap", "map_ap_divider", "map_ap_ped_crossing", "map_ap_boundary"):
        assert key in metrics, key
    for key in VAD_KEYS:
        assert key in metrics, key
    assert metrics["plan_L2_3s"] == metrics["plan_l2_3s"]
    assert metrics["pts_bbox_NuScenes/NDS"] == metrics["det_nds"]
    assert metrics["NuscMap_chamfer/mAP"] == metrics["map_ap"]
    if metrics["plan_col_3s"] is not None:
        assert metrics["plan_obj_box_col_3s"] == pytest.approx(metrics["plan_col_3s"] / 100)
    assert metrics["num_samples"] == 3
    assert metrics["recipe"] == "debug"


def test_predictions_parquet_has_one_row_per_sample_with_flattened_arrays(evaluated):
    table = pq.read_table(evaluated / "predictions.parquet").to_pylist()
    assert len(table) == 3
    row = table[0]
    assert len(row["plan_traj"]) == 12 and len(row["gt_traj"]) == 12 and len(row["gt_mask"]) == 6
    assert len(row["boxes"]) == 9 * row["num_boxes"] == 9 * len(row["scores"])
    assert len(row["map_vectors"]) == 40 * row["num_map"]


def test_report_says_the_data_is_synthetic(evaluated):
    report = (evaluated / "report.md").read_text()
    assert "Data: synthetic" in report
    assert "| L2 1 s" in report
    assert "VAD-Base (VAD paper)" in report and "NetRoller Bias-C1-PEl (NetRoller paper)" in report


def test_comparison_report_shows_the_published_rows_beside_the_runs(tmp_path):
    from netroller.stages.report import write_report

    run = tmp_path / "runs" / "baseline"
    (run / "eval").mkdir(parents=True)
    figures = {"plan_l2_1s": 0.5, "plan_l2_2s": 0.8, "plan_l2_3s": 1.1, "plan_col_1s": 0.3}
    (run / "eval" / "metrics.json").write_text(
        json.dumps({**figures, "plan_col_2s": 0.4, "plan_col_3s": 0.5})
    )
    text = write_report([run], tmp_path / "report.md").read_text()
    assert "| baseline | baseline | 0.500 | 0.800 | 1.100 | 0.800 | 0.300 | 0.400 | 0.500 | 0.400 |" in text
    assert "| VAD-Tiny | published (VAD paper) | 0.46 | 0.76 | 1.12 | 0.7800 | 0.21 | 0.35 | 0.58 |" in text
    assert "| VAD-Base | published (VAD paper) |" in text
    assert "| VAD-Base re-run | published (NetRoller paper) | n/a | n/a | n/a | 0.7175 |" in text
    assert "| NetRoller Bias-C1-PEl | published (NetRoller paper) |" in text and "| 0.1628 |" in text
    assert "| NetRoller TF-C0 | published (NetRoller paper) |" in text and "| 0.1923 |" in text


def test_out_name_picks_a_variant_folder(tiny_run, index_path):
    out = evaluate(
        EvalConfig(run=tiny_run, index=index_path, out_name="eval-lag3", max_samples=1, num_plots=0)
    )
    assert out == tiny_run / "eval-lag3"
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 1


def test_missing_run_is_refused(index_path, tmp_path):
    with pytest.raises(ModelError, match="run folder not found"):
        evaluate(EvalConfig(run=tmp_path / "nope", index=index_path))


def test_run_whose_weights_belong_to_another_recipe_is_refused(tiny_run, index_path, tmp_path):
    from netroller.models.vad.config import config_to_dict, vad_tiny

    run = shutil.copytree(tiny_run, tmp_path / "mixed", ignore=shutil.ignore_patterns("eval*"))
    (run / "model_config.json").write_text(json.dumps(config_to_dict(vad_tiny())))
    with pytest.raises(ModelError, match="model config"):
        evaluate(EvalConfig(run=run, index=index_path))


def test_unknown_split_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="EvalConfig.split"):
        EvalConfig(run=tmp_path, index=tmp_path / "i.parquet", split="test")


def test_out_name_with_a_slash_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="EvalConfig.out_name"):
        EvalConfig(run=tmp_path, index=tmp_path / "i.parquet", out_name="a/b")


def test_cli_eval_writes_the_eval_folder(tiny_run, index_path):
    from netroller.cli.main import main

    code = main(
        [
            "eval",
            "--run",
            str(tiny_run),
            "--index",
            str(index_path),
            "--max-samples",
            "1",
            "--num-plots",
            "0",
            "--out-name",
            "eval-cli",
        ]
    )
    assert code == 0
    assert (tiny_run / "eval-cli" / "metrics.json").is_file()


def test_cli_eval_of_a_missing_run_exits_2(index_path, tmp_path, capsys):
    from netroller.cli.main import main

    assert main(["eval", "--run", str(tmp_path / "nope"), "--index", str(index_path)]) == 2
    assert "run folder not found" in capsys.readouterr().err
