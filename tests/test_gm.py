"""The GM package: the tiny GM build, loading, hidden-state capture and prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from netroller.cli.gm_cmd import gm_app
from netroller.data.index import CAMERAS
from netroller.errors import ConfigError, DataError, MissingPathError, ModelError
from netroller.models.gm.capture import Decoding, LatentCapturer, Query, resolve_layers, top_p_draw
from netroller.models.gm.loader import load_gm, weights_hash
from netroller.models.gm.prompts import DEFAULT_TEMPLATE, PromptSource, prompt_hash, render_prompt
from netroller.models.gm.tiny import STAND_IN_FILE, build_tiny_gm

QUESTION = "What should the ego vehicle do next?"


@pytest.fixture(scope="module")
def gm(tiny_gm):
    return load_gm(tiny_gm)


def _cameras(seed: int) -> list[Image.Image]:
    """Six small synthetic camera frames: a sky/road gradient with a few coloured boxes."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(6):
        img = np.zeros((90, 160, 3), dtype=np.uint8)
        img[:45] = rng.integers(100, 220, 3)
        img[45:] = rng.integers(30, 120, 3)
        for _ in range(3):
            y, x = rng.integers(20, 70), rng.integers(0, 140)
            img[y : y + 15, x : x + 20] = rng.integers(0, 255, 3)
        frames.append(Image.fromarray(img))
    return frames


def _inputs(gm, images, question, extra_ids=()):
    prompt = render_prompt(gm.processor, question, fmt="alpaca", cameras=CAMERAS[: len(images)])
    batch = gm.processor(images=images, text=prompt, return_tensors="pt")
    if extra_ids:
        extra = torch.tensor([list(extra_ids)], dtype=batch["input_ids"].dtype)
        batch["input_ids"] = torch.cat([batch["input_ids"], extra], dim=1)
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    return batch


def _reference_hidden_states(gm, images, question, extra_ids=()):
    with torch.inference_mode():
        out = gm.model(**_inputs(gm, images, question, extra_ids), output_hidden_states=True)
    return [h[0].numpy() for h in out.hidden_states]


# --- build -------------------------------------------------------------------------------------------


def test_same_seed_builds_identical_weights(tiny_gm, tmp_path):
    again = build_tiny_gm(tmp_path / "again", seed=0)
    assert weights_hash(again) == weights_hash(tiny_gm)


def test_cli_gm_tiny_builds_with_the_given_seed(tiny_gm, tmp_path):
    out = tmp_path / "seed1"
    result = CliRunner().invoke(gm_app, ["tiny", "--out", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / STAND_IN_FILE).read_text())["seed"] == 1
    assert weights_hash(out) != weights_hash(tiny_gm)


def test_build_skips_a_complete_folder(tiny_gm):
    before = (tiny_gm / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_gm(tiny_gm, seed=0) == tiny_gm
    assert (tiny_gm / "model.safetensors").stat().st_mtime_ns == before


def test_build_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match="not a tiny-GM folder"):
        build_tiny_gm(tmp_path)


# --- load --------------------------------------------------------------------------------------------


def test_load_gm_reports_text_model_shape_and_stand_in(gm, tiny_gm):
    assert (gm.num_layers, gm.hidden_size) == (4, 128)
    assert gm.is_random_stand_in
    assert gm.info.model_hash == weights_hash(tiny_gm) and len(gm.info.processor_hash) == 64
    assert type(gm.model).__name__ == "LlavaForConditionalGeneration"


def test_load_gm_missing_path_raises(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_gm(tmp_path / "nope")


def test_load_gm_text_only_model_raises(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    with pytest.raises(ModelError, match="'llama' model, not an image-text-to-text model"):
        load_gm(tmp_path / "llama")


def test_load_gm_unknown_dtype_raises(tiny_gm):
    with pytest.raises(ConfigError, match="dtype must be one of"):
        load_gm(tiny_gm, dtype="int8")


def test_cli_gm_info_labels_the_stand_in(tiny_gm):
    result = CliRunner().invoke(gm_app, ["info", "--model", str(tiny_gm)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "random-weight stand-in" in out and "4 layers, hidden 128" in out


# --- layers and tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("all", (0, 1, 2, 3)), ("0,2", (0, 2)), ("-1", (3,)), ("3, -4", (0, 3)), ([1, -1], (1, 3))],
)
def test_resolve_layers_accepts_specs(spec, expected):
    assert resolve_layers(spec, 4) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("4", "layer 4 is out of range"),
        ("-5", "layer -5 is out of range"),
        ("0,x", "comma-separated integers"),
        ("1,-3", "same layer twice"),
        ([], "at least one layer"),
    ],
)
def test_resolve_layers_rejects_bad_specs(spec, message):
    with pytest.raises(ConfigError, match=message):
        resolve_layers(spec, 4)


def test_capturer_rejects_zero_tokens(gm):
    with pytest.raises(ConfigError, match="tokens must be an integer >= 1, got 0"):
        LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=0)


# --- capture -----------------------------------------------------------------------------------------


def test_prefill_capture_equals_output_hidden_states(gm):
    images = _cameras(0)
    cap = LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=1).capture(images, QUESTION)
    ref = _reference_hidden_states(gm, images, QUESTION)
    assert cap.hidden.shape == (4, 1, 128) and cap.length == 1 and cap.token_ids.shape == (0,)
    # HF LLaMA: hidden_states[i + 1] is the output of layer i, except the last entry, which is after the
    # final norm; the capture is the residual stream before it.
    for layer in range(3):
        np.testing.assert_allclose(cap.hidden[layer, 0], ref[layer + 1][-1], rtol=1e-5, atol=1e-4)
    norm = gm.model.model.language_model.norm
    with torch.inference_mode():
        normed = norm(torch.from_numpy(cap.hidden[3, 0])).numpy()
    np.testing.assert_allclose(normed, ref[4][-1], rtol=1e-5, atol=1e-4)


def test_generated_positions_equal_a_full_forward_over_the_answer(gm):
    images = _cameras(1)
    cap = LatentCapturer(gm, cameras=CAMERAS, layers="0,2", tokens=4, stop_at_eos=False).capture(
        images, QUESTION
    )
    assert cap.length == 4
    ref = _reference_hidden_states(gm, images, QUESTION, extra_ids=cap.token_ids.tolist())
    prompt_end = ref[0].shape[0] - 4  # the last prompt token; generated tokens follow it
    for row, layer in enumerate((0, 2)):
        np.testing.assert_allclose(cap.hidden[row], ref[layer + 1][prompt_end:], rtol=1e-4, atol=1e-3)


def test_one_token_capture_is_the_prefix_of_four(gm):
    images = _cameras(2)
    one = LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=1).capture(images, QUESTION)
    four = LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=4).capture(images, QUESTION)
    np.testing.assert_allclose(four.hidden[:, :1], one.hidden, rtol=1e-5, atol=1e-4)


def test_eos_stops_early_and_zero_pads(gm):
    images = _cameras(3)
    full = LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=8, stop_at_eos=False).capture(
        images, QUESTION
    )
    stop_token = int(full.token_ids[2])
    kept = full.token_ids.tolist().index(stop_token)  # tokens before the first occurrence are kept
    config = gm.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = stop_token  # make a token the model does emit act as EOS
    try:
        cap = LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=8).capture(images, QUESTION)
    finally:
        config.eos_token_id = saved
    assert cap.length == 1 + kept < 8
    assert not cap.hidden[:, cap.length :].any()
    assert (cap.token_ids[kept:] == -1).all()
    np.testing.assert_array_equal(cap.token_ids[:kept], full.token_ids[:kept])
    np.testing.assert_allclose(
        cap.hidden[:, : cap.length], full.hidden[:, : cap.length], rtol=1e-5, atol=1e-4
    )


@pytest.fixture(scope="module")
def natural_lengths(gm):
    """Lengths at T=8 with early stopping for six image sets (sample s uses `_cameras(s)`)."""
    capturer = LatentCapturer(gm, cameras=CAMERAS, layers="-1", tokens=8)
    return [c.length for c in capturer.capture_batch([Query(_cameras(s), QUESTION) for s in range(6)])]


def test_tiny_gm_emits_eos_on_some_inputs(natural_lengths):
    assert min(natural_lengths) < 8, natural_lengths


def test_stop_at_eos_false_generates_every_token(gm, natural_lengths):
    stopped = natural_lengths.index(min(natural_lengths))
    cap = LatentCapturer(gm, cameras=CAMERAS, layers="-1", tokens=8, stop_at_eos=False).capture(
        _cameras(stopped), QUESTION
    )
    assert cap.length == 8 and (cap.token_ids >= 0).all()


def test_batch_capture_equals_per_sample_capture(gm):
    questions = [
        "Stop?",
        QUESTION,
        "Is there a pedestrian crossing in front of the ego car, and should it brake?",
    ]
    items = [Query(_cameras(10 + i), q) for i, q in enumerate(questions)]
    capturer = LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=3, stop_at_eos=False)
    for one, batched in zip(
        [capturer.capture(q.images, q.question) for q in items], capturer.capture_batch(items), strict=True
    ):
        assert one.length == batched.length
        np.testing.assert_array_equal(one.token_ids, batched.token_ids)
        np.testing.assert_allclose(one.hidden, batched.hidden, rtol=1e-4, atol=1e-3)


ANSWER = (
    "A pedestrian is crossing the street at the zebra crossing ahead, so the ego vehicle should slow down."
)


def _joint(gm, images, question: str, answer: str) -> tuple[dict, int]:
    """The processor's inputs of prompt + answer as one string, and the prompt's own token count."""
    prompt = render_prompt(gm.processor, question, fmt="alpaca", cameras=CAMERAS[: len(images)])
    full = gm.processor(images=images, text=prompt + answer, return_tensors="pt")
    alone = gm.processor(images=images, text=prompt, return_tensors="pt")
    return full, alone["input_ids"].shape[1]


def test_teacher_forced_latents_equal_one_forward_over_prompt_and_answer(gm):
    images = _cameras(4)
    capturer = LatentCapturer(gm, cameras=CAMERAS, layers="0,2", tokens=6, latents="teacher-forced")
    cap = capturer.capture(images, QUESTION, answer=ANSWER)
    full, prompt_len = _joint(gm, images, QUESTION, ANSWER)
    assert full["input_ids"].shape[1] > prompt_len + 5  # T=6 keeps the last prompt token and 5 after it
    assert cap.length == 6
    assert cap.token_ids.tolist() == full["input_ids"][0, prompt_len : prompt_len + 5].tolist()
    with torch.inference_mode():
        ref = [h[0].numpy() for h in gm.model(**full, output_hidden_states=True).hidden_states]
    for row, layer in enumerate((0, 2)):
        np.testing.assert_allclose(
            cap.hidden[row], ref[layer + 1][prompt_len - 1 : prompt_len + 5], rtol=1e-5, atol=1e-4
        )


def test_teacher_forced_short_answer_gives_a_shorter_length(gm):
    capturer = LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=64, latents="teacher-forced")
    cap = capturer.capture(_cameras(5), QUESTION, answer="Stop.")
    full, prompt_len = _joint(gm, _cameras(5), QUESTION, "Stop.")
    n = full["input_ids"].shape[1] - prompt_len
    assert cap.length == 1 + n < 64
    assert not cap.hidden[:, cap.length :].any() and (cap.token_ids[n:] == -1).all()


def test_teacher_forced_batch_equals_per_sample(gm):
    queries = [
        Query(_cameras(20), "Stop?", "Yes, the light is red."),
        Query(_cameras(21), QUESTION, ANSWER),
        Query(_cameras(22), "Is the road clear?", "No."),
    ]
    capturer = LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=8, latents="teacher-forced")
    for q, batched in zip(queries, capturer.capture_batch(queries), strict=True):
        one = capturer.capture(q.images, q.question, answer=q.answer)
        assert one.length == batched.length
        np.testing.assert_array_equal(one.token_ids, batched.token_ids)
        np.testing.assert_allclose(one.hidden, batched.hidden, rtol=1e-4, atol=1e-4)


def test_teacher_forcing_without_an_answer_is_refused(gm):
    capturer = LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=4, latents="teacher-forced")
    with pytest.raises(ConfigError, match="teacher-forced latents need each sample's answer; sample s7"):
        capturer.capture(_cameras(0), QUESTION, key="s7")


SAMPLE = Decoding(mode="sample", temperature=1.0, top_p=0.95, seed=3)


def test_sampled_answers_are_reproducible_per_sample_whatever_the_batch(gm):
    capturer = LatentCapturer(gm, cameras=CAMERAS, layers="-1", tokens=6, decoding=SAMPLE, stop_at_eos=False)
    alone = capturer.capture(_cameras(30), QUESTION, key="sample-a")
    again = capturer.capture(_cameras(30), QUESTION, key="sample-a")
    batch = capturer.capture_batch(
        [Query(_cameras(31), "Stop?", key="sample-b"), Query(_cameras(30), QUESTION, key="sample-a")]
    )
    np.testing.assert_array_equal(alone.token_ids, again.token_ids)
    np.testing.assert_array_equal(alone.hidden, again.hidden)
    np.testing.assert_array_equal(alone.token_ids, batch[1].token_ids)
    np.testing.assert_allclose(alone.hidden, batch[1].hidden, rtol=1e-4, atol=1e-3)


def test_sampling_depends_on_the_seed_and_differs_from_greedy(gm):
    images = _cameras(30)
    greedy = LatentCapturer(gm, cameras=CAMERAS, layers="-1", tokens=8, stop_at_eos=False)
    runs = {
        seed: LatentCapturer(
            gm,
            cameras=CAMERAS,
            layers="-1",
            tokens=8,
            decoding=Decoding(mode="sample", temperature=1.0, top_p=0.95, seed=seed),
            stop_at_eos=False,
        )
        .capture(images, QUESTION, key="sample-a")
        .token_ids.tolist()
        for seed in range(4)
    }
    assert len({tuple(t) for t in runs.values()}) > 1
    assert greedy.capture(images, QUESTION).token_ids.tolist() not in runs.values()


def test_top_p_draw_keeps_only_the_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    gen = torch.Generator().manual_seed(0)
    # Sorted: 0.5, 0.3, 0.15, 0.05; a token is kept while the mass before it is <= 0.75: 0.5 and 0.3.
    draws = {top_p_draw(probs, 0.75, gen) for _ in range(200)}
    assert draws == {1, 3}
    assert {top_p_draw(probs, 0.01, gen) for _ in range(50)} == {1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_p": 0.0}, r"top-p must lie in \(0, 1\], got 0.0"),
        ({"top_p": 1.5}, r"top-p must lie in \(0, 1\], got 1.5"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"mode": "beam"}, "decode must be one of greedy, sample, got 'beam'"),
    ],
)
def test_bad_decoding_is_one_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Decoding(**kwargs)


def test_bfloat16_batch_equals_per_sample_within_its_precision(gm, tiny_gm):
    """Batching (padding) moves bfloat16 latents no further than bfloat16 itself moves them from float32."""
    gm16 = load_gm(tiny_gm, dtype="bfloat16", fingerprint=False)
    assert gm16.info.compute_dtype == "bfloat16" and gm16.model.dtype == torch.bfloat16
    queries = [Query(_cameras(40 + i), q) for i, q in enumerate(["Stop?", QUESTION])]
    capturer = LatentCapturer(gm16, cameras=CAMERAS, layers="all", tokens=1)
    exact = LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=1)
    for q, batched in zip(queries, capturer.capture_batch(queries), strict=True):
        one = capturer.capture(q.images, q.question)
        dtype_error = np.abs(one.hidden - exact.capture(q.images, q.question).hidden).max()
        assert np.abs(one.hidden - batched.hidden).max() <= 2 * dtype_error


# --- prompts -----------------------------------------------------------------------------------------


def _drivelm(path: Path, frames: dict) -> Path:
    path.write_text(json.dumps({"scene-1": {"key_frames": frames}}))
    return path


def test_template_defaults_to_the_default_question():
    assert PromptSource.template().select("any", "one")[0].question == DEFAULT_TEMPLATE


def test_prompt_hash_depends_on_the_question(gm):
    def key(question: str) -> str:
        return prompt_hash(PromptSource.template(question), gm.processor, fmt="auto", cameras=CAMERAS)

    assert key("a?") != key("b?") and key("a?") == key("a?")


def test_drivelm_picks_the_first_planning_question(tmp_path):
    qa = {
        "perception": [{"Q": "P1?", "A": "x"}],
        "planning": [{"Q": "Plan1?", "A": "y"}, {"Q": "Plan2?", "A": "z"}],
    }
    src = PromptSource.drivelm(_drivelm(tmp_path / "qa.json", {"s1": {"QA": qa}}))
    assert src.select("s1", "one")[0].question == "Plan1?"


def test_drivelm_without_planning_uses_the_first_question(tmp_path):
    qa = {"perception": [{"Q": "P1?", "A": "x"}], "prediction": [{"Q": "Pr1?", "A": "y"}]}
    src = PromptSource.drivelm(_drivelm(tmp_path / "qa.json", {"s1": {"QA": qa}}))
    assert src.select("s1", "one")[0].question == "P1?"


def test_drivelm_falls_back_for_samples_without_questions(tmp_path):
    path = _drivelm(tmp_path / "qa.json", {"s1": {"QA": {"planning": [{"Q": "Go?", "A": "y"}]}}})
    assert PromptSource.drivelm(path, fallback="Fallback?").select("s2", "one")[0].question == "Fallback?"


def test_drivelm_empty_file_raises(tmp_path):
    (tmp_path / "qa.json").write_text("")
    with pytest.raises(DataError, match="not valid JSON"):
        PromptSource.drivelm(tmp_path / "qa.json")


def test_drivelm_without_questions_raises(tmp_path):
    with pytest.raises(DataError, match="holds no questions"):
        PromptSource.drivelm(_drivelm(tmp_path / "qa.json", {"s1": {"QA": {"planning": []}}}))


def test_drivelm_malformed_structure_raises(tmp_path):
    with pytest.raises(DataError, match="key frame 's1' has no 'QA' object"):
        PromptSource.drivelm(_drivelm(tmp_path / "qa.json", {"s1": {"qa": {}}}))


def test_drivelm_missing_file_raises(tmp_path):
    with pytest.raises(MissingPathError, match="does not exist"):
        PromptSource.drivelm(tmp_path / "qa.json")
