"""The NetRoller fine-tune: train --cache from a baseline, eval variants, lag, shuffle, keys, online."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from netroller.cli.main import main
from netroller.data.index import read_index
from netroller.data.latents import CachedLatents, derangement, latent_sources
from netroller.errors import CacheError, CacheKeyMismatchError, ConfigError
from netroller.stages.evaluate import EvalConfig, evaluate
from netroller.stages.finetune import NetRollerConfig, finetune, finetune_c1, open_latents
from netroller.stages.train import TrainConfig, train
from netroller.storage.reader import CacheReader


@pytest.fixture(scope="module")
def baseline(index_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "baseline"
    return train(TrainConfig(index=index_path, out=out, epochs=1, max_samples=2))


@pytest.fixture(scope="module")
def bias_run(index_path, tiny_cache, baseline, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "bias-query"
    cfg = finetune_c1(index_path, out, epochs=1, max_samples=4, lr=1e-3)
    return finetune(cfg, NetRollerConfig(cache=tiny_cache, init=baseline, mode="bias", shift="query"))


def test_finetune_records_settings_and_latent_key(bias_run, tiny_cache):
    saved = json.loads((bias_run / "netroller.json").read_text())
    key = CacheReader(tiny_cache).key
    assert saved["netroller"]["mode"] == "bias" and saved["netroller"]["shift"] == "query"
    assert saved["latents_key"]["model_hash"] == key.model_hash
    assert saved["latents_key"]["layers"] == list(key.layers)
    assert saved["adapter"]["gm_hidden"] == key.hidden_size
    assert key.model_stand_in  # the tiny GM is recorded as the random-weight stand-in


def test_finetune_checkpoint_holds_the_adapter(bias_run):
    weights = load_file(str(bias_run / "checkpoints" / "last.safetensors"))
    assert any(k.startswith("hook.netroller.adapter.") for k in weights)


def test_finetune_uses_the_authors_c1_optimizer(bias_run):
    cfg = json.loads((bias_run / "train_config.json").read_text())
    assert cfg["betas"] == [0.9, 0.95] and cfg["weight_decay"] == 0.02 and cfg["grad_clip"] == 5.0
    assert cfg["warmup_steps"] == 2  # one epoch of 4 samples at batch 2


def test_finetune_starts_from_the_baseline(index_path, tiny_cache, baseline, tmp_path):
    base = load_file(str(baseline / "checkpoints" / "last.safetensors"))
    cfg = finetune_c1(index_path, tmp_path / "frozen", epochs=1, max_samples=2, lr=1e-3)
    run = finetune(cfg, NetRollerConfig(cache=tiny_cache, init=baseline, freeze_sm=True))
    after = load_file(str(run / "checkpoints" / "last.safetensors"))
    for k, v in base.items():
        torch.testing.assert_close(after[k], v, msg=f"frozen SM weight {k} changed")
    adapter = [k for k in after if k.startswith("hook.netroller.")]
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert adapter and log[0]["kind"] == "run" and log[0]["samples"] == 2


@pytest.fixture(scope="module")
def bias_evals(bias_run, index_path, tiny_cache):
    """The bias run evaluated plain, with lag 1 and with shuffled latents."""
    for lag, shuffle, name in [(0, False, "eval"), (1, False, "eval-lag1"), (0, True, "eval-shuffled")]:
        cfg = EvalConfig(
            run=bias_run,
            index=index_path,
            max_samples=3,
            num_plots=0,
            cache=tiny_cache,
            latent_lag=lag,
            shuffle_latents=shuffle,
            out_name=name,
        )
        evaluate(cfg)
    return bias_run


def test_eval_of_a_netroller_run_writes_each_variant(bias_evals):
    for lag, shuffle, name in [(0, False, "eval"), (1, False, "eval-lag1"), (0, True, "eval-shuffled")]:
        metrics = json.loads((bias_evals / name / "metrics.json").read_text())
        assert metrics["latent_lag"] == lag and metrics["shuffled_latents"] == shuffle
        assert metrics["netroller_mode"] == "bias" and np.isfinite(metrics["plan_l2_1s"] or 0.0)
    assert "random-weight stand-in" in (bias_evals / "eval" / "report.md").read_text()
    lagged = json.loads((bias_evals / "eval-lag1" / "metrics.json").read_text())
    assert lagged["samples_without_latents"] >= 1  # the val scene's first keyframe has no earlier frame


def test_eval_of_a_netroller_run_needs_the_cache(bias_run, index_path):
    with pytest.raises(ConfigError, match="NetRoller run: give the latent cache with --cache"):
        evaluate(EvalConfig(run=bias_run, index=index_path, max_samples=1, num_plots=0))


def test_cli_train_cache_then_eval(index_path, tiny_cache, baseline, tmp_path):
    out = tmp_path / "tf-feature"
    args = ["train", "--index", str(index_path), "--cache", str(tiny_cache), "--init", str(baseline)]
    args += ["--mode", "tf", "--shift", "feature", "--epochs", "1", "--max-samples", "2", "--out", str(out)]
    assert main(args) == 0
    assert json.loads((out / "netroller.json").read_text())["adapter"]["mode"] == "tf"
    code = main(
        ["eval", "--run", str(out), "--index", str(index_path), "--cache", str(tiny_cache)]
        + ["--max-samples", "2", "--num-plots", "0", "--shuffle-latents"]
    )
    assert code == 0 and (out / "eval-shuffled" / "metrics.json").is_file()


def test_cli_bad_mode_is_one_line(index_path, tiny_cache, tmp_path, capsys):
    code = main(
        ["train", "--index", str(index_path), "--cache", str(tiny_cache), "--mode", "big"]
        + ["--out", str(tmp_path / "r")]
    )
    assert code == 2
    assert "mode must be bias | tf, got 'big'" in capsys.readouterr().err


def test_lag_gives_the_earlier_keyframe_and_none_at_scene_start(index_path):
    index = read_index(index_path)
    sources = latent_sources(index, index.records, lag=2)
    for rec, src in zip(index.records, sources, strict=True):
        if rec.frame_index < 2:
            assert src is None
        else:
            prev = index[src]
            assert prev.scene_token == rec.scene_token and prev.frame_index == rec.frame_index - 2


def test_shuffle_is_a_permutation_without_fixed_points():
    for n in (2, 3, 17, 100):
        perm = derangement(n, seed=n)
        assert sorted(perm.tolist()) == list(range(n))
        assert not np.any(perm == np.arange(n))
    np.testing.assert_array_equal(derangement(10, 0), derangement(10, 0))


def test_layers_used_selects_cache_layers(tiny_cache, index_path):
    key = CacheReader(tiny_cache).key
    setup = open_latents(NetRollerConfig(cache=tiny_cache, layers_used="-1"), index_path)
    assert setup.key.layers == (key.layers[-1],)
    token = read_index(index_path).records[0].sample_token
    full = CachedLatents(CacheReader(tiny_cache), tuple(range(len(key.layers)))).get([token], [0])
    last = setup.source.get([token], [0])
    torch.testing.assert_close(last.hidden[:, 0], full.hidden[:, -1])


def _flip_a_bit_of_sample(cache: Path, token: str) -> None:
    import os

    from netroller.storage.commits import expected_files
    from netroller.storage.shard_format import ShardIndex, array_specs

    reader = CacheReader(cache)
    shard, local = divmod(reader.tokens.index(token), reader.layout.shard_size)
    path = cache / expected_files(reader.layout, shard)["hidden"]
    spec = array_specs(reader.layout)["hidden"]
    fd = os.open(path, os.O_RDONLY)
    try:
        index = ShardIndex.read(fd, os.fstat(fd).st_size, spec, where=str(path))
    finally:
        os.close(fd)
    raw = bytearray(path.read_bytes())
    raw[int(index.offsets[local]) + 5] ^= 0x04
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def damaged_cache(tiny_cache, index_path, tmp_path_factory) -> tuple[Path, str, str]:
    """A copy of tiny_cache with one bit flipped in the first train sample and in the first val sample."""
    root = Path(shutil.copytree(tiny_cache, tmp_path_factory.mktemp("damaged") / "cache"))
    index = read_index(index_path)
    train_token, val_token = index.split("train")[0].sample_token, index.split("val")[0].sample_token
    _flip_a_bit_of_sample(root, train_token)
    _flip_a_bit_of_sample(root, val_token)
    return root, train_token, val_token


def test_train_on_a_damaged_sample_stops_naming_it_and_skip_damaged_leaves_it_out(
    index_path, damaged_cache, baseline, tmp_path, capsys
):
    root, train_token, _ = damaged_cache
    args = ["train", "--index", str(index_path), "--cache", str(root), "--init", str(baseline)]
    args += ["--epochs", "1", "--max-samples", "2"]
    assert main([*args, "--out", str(tmp_path / "strict")]) != 0
    err = capsys.readouterr().err
    assert f"sample {train_token} " in err and "do not match their checksum" in err
    assert main([*args, "--out", str(tmp_path / "skip"), "--skip-damaged"]) == 0
    assert "1 damaged, left out by --skip-damaged" in capsys.readouterr().out


def test_eval_with_skip_damaged_counts_the_damaged_samples(bias_run, index_path, damaged_cache):
    root, _, val_token = damaged_cache
    cfg = EvalConfig(
        run=bias_run, index=index_path, max_samples=2, num_plots=0, cache=root, out_name="eval-dmg"
    )
    with pytest.raises(CacheError, match=f"sample {val_token} .*do not match their checksum"):
        evaluate(cfg)
    out = evaluate(dataclasses.replace(cfg, skip_damaged=True))
    assert json.loads((out / "metrics.json").read_text())["cache_samples_damaged_left_out"] == 2


def test_online_run_records_the_same_latent_key_as_the_cache(tiny_cache, tiny_gm, index_path):
    online = open_latents(
        NetRollerConfig(online=True, model=str(tiny_gm), tokens=2, layers="all"), index_path
    )
    assert online.key == CacheReader(tiny_cache).key.latent_key()


def test_online_trained_run_is_evaluated_with_a_cache_of_the_same_gm(
    index_path, tiny_cache, tiny_gm, baseline, tmp_path
):
    cfg = finetune_c1(index_path, tmp_path / "online", epochs=1, max_samples=2, lr=1e-3)
    nr = NetRollerConfig(online=True, model=str(tiny_gm), tokens=2, layers="all", init=baseline)
    run = finetune(cfg, nr)
    assert json.loads((run / "netroller.json").read_text())["latents_key"]["model"] == tiny_gm.name
    out = evaluate(EvalConfig(run=run, index=index_path, max_samples=2, num_plots=0, cache=tiny_cache))
    assert (out / "metrics.json").is_file()


def test_online_latents_equal_cached_ones(tiny_cache, tiny_gm, index_path):
    tokens = [r.sample_token for r in read_index(index_path).records[:2]] + [None]
    cached = open_latents(NetRollerConfig(cache=tiny_cache), index_path).source.get(tokens, [0, 0, 0])
    online = open_latents(
        NetRollerConfig(online=True, model=str(tiny_gm), tokens=2, layers="all"), index_path
    ).source.get(tokens, [0, 0, 0])
    assert online.present.tolist() == cached.present.tolist() == [True, True, False]
    assert online.length.tolist() == cached.length.tolist()
    torch.testing.assert_close(online.hidden, cached.hidden, rtol=2e-3, atol=2e-3)


def test_cache_and_online_together_are_refused(tiny_cache):
    with pytest.raises(ConfigError, match="exactly one of cache"):
        NetRollerConfig(cache=tiny_cache, online=True)


def test_report_orders_baseline_variants_controls_and_lags(bias_evals, baseline, index_path, tmp_path):
    from netroller.stages.report import collect, write_report

    bias_run = bias_evals
    evaluate(EvalConfig(run=baseline, index=index_path, max_samples=2, num_plots=0))
    rows = collect([bias_run, baseline])
    assert [r.kind for r in rows][:2] == ["baseline", "netroller"]
    with_reference = collect([bias_run, baseline], index=index_path)
    assert [r.kind for r in with_reference][:3] == ["reference", "baseline", "netroller"]
    assert with_reference[0].metrics["num_samples"] == len(read_index(index_path).split("val"))
    assert rows[-1].kind == "lag" and rows[-1].lag == 1
    assert any(r.kind == "control" for r in rows)
    out = write_report([baseline, bias_run], tmp_path / "report.md")
    text = out.read_text()
    assert "| baseline | baseline |" in text and "| bias-query (lag1) | lag 1 |" in text
    # Each val scene's L2 avg per row, from metrics.json's plan_l2_by_scene.
    scenes = sorted({r.scene_name for r in read_index(index_path).split("val")})
    assert "L2 avg (m, VAD) on each scene of the split:" in text
    assert f"| run | kind | {' | '.join(scenes)} |" in text
    assert (tmp_path / "report_plots" / "planning.png").is_file()
    assert (tmp_path / "report_plots" / "lag_sweep.png").is_file()


def test_report_of_an_unevaluated_run_is_refused(tmp_path):
    from netroller.errors import MissingPathError
    from netroller.stages.report import collect

    (tmp_path / "run").mkdir()
    with pytest.raises(MissingPathError, match="no evaluation yet"):
        collect([tmp_path / "run"])


def test_unfrozen_finetune_trains_the_sm_too(bias_run, baseline):
    base = load_file(str(baseline / "checkpoints" / "last.safetensors"))
    after = load_file(str(bias_run / "checkpoints" / "last.safetensors"))
    changed = [k for k, v in base.items() if v.is_floating_point() and not torch.equal(after[k], v)]
    assert len(changed) > len(base) // 2  # the SM moved with the adapter: gradients reached it


def test_a_teacher_forced_run_is_evaluated_on_generated_latents_and_the_report_names_it(
    index_path, synth_root, tiny_gm, baseline, tmp_path
):
    from netroller.stages.harvest import HarvestConfig, harvest

    qa = synth_root / "drivelm_qa.json"
    common = dict(index=index_path, model=str(tiny_gm), tokens=4, drivelm=qa, shard_size=8, workers=0)
    forced = harvest(HarvestConfig(out=tmp_path / "tf", latents="teacher-forced", progress=False, **common))
    generated = harvest(HarvestConfig(out=tmp_path / "gen", decode="sample", progress=False, **common))
    cfg = finetune_c1(index_path, tmp_path / "run", epochs=1, max_samples=2, lr=1e-3)
    run = finetune(cfg, NetRollerConfig(cache=forced, init=baseline))
    out = evaluate(EvalConfig(run=run, index=index_path, max_samples=2, num_plots=0, cache=generated))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["latent_pairing"] == "trained on teacher-forced latents, evaluated on generated latents"
    assert "Pairing: trained on teacher-forced latents" in (out / "report.md").read_text()
    # Resuming the training on the generated cache is refused: the pairing is for evaluation only.
    resume = dataclasses.replace(cfg, resume=True)
    with pytest.raises(CacheKeyMismatchError, match="latents: the run was trained with 'teacher-forced'"):
        finetune(resume, NetRollerConfig(cache=generated, init=baseline))


def test_the_authors_recipes_set_their_configs_values(index_path, tmp_path):
    from netroller.models.adapter import AdapterMode, ShiftPlace
    from netroller.stages.finetune import AUTHORS_RECIPES, authors_recipe

    kw = dict(cache=tmp_path / "cache", init=None)
    c1 = authors_recipe("c1", index_path, tmp_path / "r", workers=8, **kw)
    t, nr = c1.train, c1.netroller
    assert (t.batch_size, t.accumulate, t.workers) == (64, 8, 8)  # 1 a GPU x 8 GPUs x 8 steps
    assert (t.lr, t.betas, t.weight_decay, t.grad_clip, t.epochs) == (3.125e-5, (0.9, 0.95), 0.02, 5.0, 5)
    assert (t.schedule, t.warmup_ratio, t.min_lr_ratio) == ("epoch", 1e-3, 1e-6)
    assert (nr.mode, nr.shift, nr.latent_lag, nr.lag_policy, nr.init_std) == (
        AdapterMode.BIAS, ShiftPlace.QUERY, 3, "annotated", 1.0,
    )  # fmt: skip
    assert c1.tokens == 192 and nr.layers_used == "all" and nr.layer_embedding and not nr.freeze_sm
    assert authors_recipe("c1", index_path, tmp_path / "r", **kw).train.accumulate == 64  # one worker
    assert authors_recipe("c2", index_path, tmp_path / "r", **kw).netroller.layers_used == "-1"
    c3 = authors_recipe("c3", index_path, tmp_path / "r", **kw)
    assert (c3.netroller.mode, c3.tokens) == (AdapterMode.TF, 1)
    assert authors_recipe("c4", index_path, tmp_path / "r", **kw).netroller.shift == ShiftPlace.FEATURE
    frozen = authors_recipe("frozen-bias", index_path, tmp_path / "r", **kw).netroller
    assert frozen.freeze_sm and not frozen.layer_embedding and frozen.shift == ShiftPlace.QUERY
    assert authors_recipe("frozen-bias-le", index_path, tmp_path / "r", **kw).netroller.layer_embedding
    assert authors_recipe("frozen-tf", index_path, tmp_path / "r", **kw).netroller.mode == AdapterMode.TF
    assert all(f.__doc__ and "rollnet_base" in f.__doc__ for f in AUTHORS_RECIPES.values())
    with pytest.raises(ConfigError, match="unknown fine-tune recipe 'c9': one of c1, c2"):
        authors_recipe("c9", index_path, tmp_path / "r", **kw)
    with pytest.raises(ConfigError, match="batch of 64 does not divide among 3 workers"):
        authors_recipe("c1", index_path, tmp_path / "r", workers=3, **kw)


def test_the_adapter_starts_from_the_authors_initialisation():
    import torch

    from netroller.models.adapter import AdapterConfig, NetRoller

    torch.manual_seed(0)
    theirs = NetRoller(AdapterConfig(gm_hidden=256, gm_layers=4, init_std=1.0)).adapter
    ours = NetRoller(AdapterConfig(gm_hidden=256, gm_layers=4)).adapter
    assert 0.9 < float(theirs.queries.std()) < 1.1 and 0.9 < float(theirs.layer_embed.std()) < 1.1
    assert float(ours.nonsense.std()) < 0.05
