"""Which latents a sample reads: the question drawn per sample and epoch (the authors' re-draw) or question 0
(eval), through the one feed builder train and eval share."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from netroller.data.latents import QuestionDraw
from netroller.errors import ConfigError

CATEGORIES = ("planning", "perception", "perception", "perception")


def test_eval_reads_question_zero():
    assert {QuestionDraw("first").choose("s1", CATEGORIES, epoch) for epoch in range(20)} == {0}


def test_the_epoch_draw_is_a_function_of_seed_epoch_and_sample():
    draw = QuestionDraw("epoch", seed=3)
    assert [draw.choose("s1", CATEGORIES, e) for e in range(30)] == [
        QuestionDraw("epoch", seed=3).choose("s1", CATEGORIES, e) for e in range(30)
    ]
    assert len({draw.choose("s1", CATEGORIES, e) for e in range(30)}) > 1  # re-drawn every epoch
    other = [QuestionDraw("epoch", seed=4).choose("s1", CATEGORIES, e) for e in range(30)]
    assert other != [draw.choose("s1", CATEGORIES, e) for e in range(30)]


def test_the_draw_picks_a_category_first_then_a_question_of_it():
    draw = QuestionDraw("epoch", seed=0)
    counts = Counter(draw.choose("s1", CATEGORIES, e) for e in range(1200))
    # planning (1 question) half the time; each of the 3 perception questions a sixth.
    assert 0.45 < counts[0] / 1200 < 0.55
    assert all(0.13 < counts[q] / 1200 < 0.2 for q in (1, 2, 3))


def test_a_sample_with_one_question_always_reads_it():
    assert {QuestionDraw("epoch").choose("s1", ("template",), e) for e in range(10)} == {0}


def test_an_unknown_draw_is_refused():
    with pytest.raises(ConfigError, match="question draw must be 'first' or 'epoch', got 'random'"):
        QuestionDraw("random")


@pytest.fixture(scope="module")
def all_questions_cache(index_path, synth_root, tiny_gm, tmp_path_factory):
    from netroller.stages.harvest import HarvestConfig, harvest

    out = tmp_path_factory.mktemp("cache-all") / "cache"
    cfg = HarvestConfig(
        index=index_path,
        out=out,
        model=str(tiny_gm),
        tokens=2,
        drivelm=synth_root / "drivelm_qa.json",
        questions="per-category",
        shard_size=16,
        workers=0,
        progress=False,
    )
    return harvest(cfg)


def test_training_draws_a_question_per_epoch_and_eval_reads_the_first(all_questions_cache, index_path):
    from netroller.data.dataset import SampleDataset
    from netroller.data.index import read_index
    from netroller.models.vad.config import debug
    from netroller.stages.latents import feed_latents, open_cache

    index = read_index(index_path)
    base = SampleDataset(index, "train", vad=debug(), train=False, max_samples=4)
    setup = open_cache(all_questions_cache, layers="all", skip_damaged=False)
    assert all(
        len(setup.source.categories(r.sample_token)) == 4 for r in base.records
    )  # 4 DriveLM categories
    train = feed_latents(setup, base, index, draw=QuestionDraw("epoch", seed=0)).dataset
    drawn = set()
    for epoch in range(6):
        train.set_epoch(epoch)
        drawn |= {train[i][2] for i in range(len(train))}
    assert len(drawn) > 1
    evaluation = feed_latents(setup, base, index, draw=QuestionDraw("first")).dataset
    assert {evaluation[i][2] for i in range(len(evaluation))} == {0}
    batch = feed_latents(setup, base, index).collate([train[0], train[1]])
    assert batch.latents.present.all()


def test_a_run_trained_on_several_questions_per_sample_evaluates(all_questions_cache, index_path, tmp_path):
    from netroller.stages.evaluate import EvalConfig, evaluate
    from netroller.stages.finetune import NetRollerConfig, finetune, finetune_c1

    cfg = finetune_c1(index_path, tmp_path / "run", epochs=2, max_samples=2, lr=1e-3)
    run = finetune(cfg, NetRollerConfig(cache=all_questions_cache))
    assert json.loads((run / "netroller.json").read_text())["latents_key"]["questions"] == "per-category"
    out = evaluate(
        EvalConfig(run=run, index=index_path, max_samples=2, num_plots=0, cache=all_questions_cache)
    )
    assert (
        out == run / "eval" and json.loads((out / "metrics.json").read_text())["samples_without_latents"] == 0
    )


def _scene_index(tmp_path):
    from netroller.data.index import IndexMeta, bare_record, read_index, write_index

    records = [
        bare_record(sample_token=f"{scene}-{f}", scene_token=scene, frame_index=f, split="train")
        for scene in ("a", "b")
        for f in range(6)
    ]
    path = write_index(records, tmp_path / "index.parquet", IndexMeta(dataroot=str(tmp_path), version="t"))
    return read_index(path)


def test_the_annotated_lag_takes_the_latest_annotated_frame_at_least_lag_earlier(tmp_path):
    from netroller.data.latents import latent_sources

    index = _scene_index(tmp_path)
    annotated = {"a-0", "a-2", "b-1", "b-5"}.__contains__
    got = latent_sources(index, index.records, lag=3, policy="annotated", annotated=annotated)
    assert got == [
        None, None, None, "a-0", "a-0", "a-2",  # a-3 and a-4: a-0 (a-1 is not annotated); a-5: a-2
        None, None, None, None, "b-1", "b-1",  # never across the scene start: b-0..b-3 have none
    ]  # fmt: skip
    exact = latent_sources(index, index.records, lag=3)
    assert exact[3:6] == ["a-0", "a-1", "a-2"] and exact[6:9] == [None, None, None]


def test_an_unknown_lag_policy_is_refused(tmp_path):
    from netroller.data.latents import latent_sources

    index = _scene_index(tmp_path)
    with pytest.raises(ConfigError, match="lag policy must be one of exact, annotated, got 'latest'"):
        latent_sources(index, index.records, lag=3, policy="latest", annotated=lambda t: True)


def test_a_template_question_is_not_an_annotation(all_questions_cache, tiny_cache, index_path):
    from netroller.data.index import read_index
    from netroller.stages.latents import open_cache

    token = read_index(index_path).records[0].sample_token
    assert open_cache(all_questions_cache, layers="all", skip_damaged=False).source.annotated(token)
    assert not open_cache(tiny_cache, layers="all", skip_damaged=False).source.annotated(token)


def test_the_annotated_policy_on_latents_without_annotations_is_refused(tiny_cache, index_path):
    from netroller.data.dataset import SampleDataset
    from netroller.data.index import read_index
    from netroller.models.vad.config import debug
    from netroller.stages.latents import feed_latents, open_cache

    index = read_index(index_path)
    base = SampleDataset(index, "train", vad=debug(), train=False, max_samples=2)
    setup = open_cache(tiny_cache, layers="all", skip_damaged=False)
    with pytest.raises(ConfigError, match="none of the latents' frames is DriveLM-annotated"):
        feed_latents(setup, base, index, lag=3, lag_policy="annotated")
