"""Prompt rendering (chat template / the authors' Alpaca format), the prompt hash, DriveLM questions with
answers, and the second tiny architecture (Qwen2-VL)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from netroller.cli.gm_cmd import gm_app
from netroller.cli.main import main
from netroller.data.index import CAMERAS
from netroller.errors import ConfigError, DataError
from netroller.models.gm.capture import _decoder_layers
from netroller.models.gm.prompts import (
    PromptSource,
    QAItem,
    prompt_hash,
    render_prompt,
    resolve_format,
)
from netroller.models.gm.tiny import STAND_IN_FILE, TinyGMSpec, build_tiny_gm

QUESTION = "Is there a pedestrian near <c1,CAM_BACK,1088.3,497.5>? What should the ego vehicle do?"
# LLaMA-Adapter V2's prompt_no_input with the authors' instruction "<image>\n" + question, written out.
AUTHORS_ONE_IMAGE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n<image>\n" + QUESTION + "\n\n### Response:"
)


def _processor(folder: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def chat_gm(tmp_path_factory) -> Path:
    """The tiny LLaVA built with its chat template."""
    return build_tiny_gm(tmp_path_factory.mktemp("gm") / "tiny-chat", spec=TinyGMSpec(chat_template=True))


@pytest.fixture(scope="module")
def qwen_gm(tmp_path_factory) -> Path:
    """The tiny random-weight Qwen2-VL."""
    return build_tiny_gm(tmp_path_factory.mktemp("gm") / "tiny-qwen", arch="qwen2-vl")


@pytest.fixture(scope="module")
def cameras() -> list[Image.Image]:
    """Six 16:9 frames (320 x 180), in CAMERAS order."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (180, 320, 3), dtype=np.uint8)) for _ in CAMERAS]


def _drivelm(path: Path, answer: str = "Slow down.") -> Path:
    qa = {
        "perception": [{"Q": "What is ahead?", "A": "A bus."}, {"Q": "  ", "A": "skipped"}],
        "planning": [{"Q": " What should the ego vehicle do? ", "A": answer}, {"Q": "Why?"}],
    }
    frames = {"s1": {"QA": qa}, "s2": {"QA": {"behavior": [{"Q": "Behaviour?", "A": "Going straight."}]}}}
    path.write_text(json.dumps({"scene": {"key_frames": frames}}))
    return path


def _non_image_text(processor, input_ids: torch.Tensor) -> str:
    ids = input_ids[0]
    return processor.tokenizer.decode(ids[ids != processor.image_token_id], skip_special_tokens=True)


def _assert_in_order(text: str, parts: list[str]) -> None:
    at = 0
    for part in parts:
        found = text.find(part, at)
        assert found >= 0, f"{part!r} missing (after position {at}) in {text!r}"
        at = found + len(part)


# --- rendering ---------------------------------------------------------------------------------------


def test_chat_prompt_of_the_tiny_gm_round_trips_through_its_processor(chat_gm, cameras):
    processor = _processor(chat_gm)
    text = render_prompt(processor, QUESTION, fmt="chat", cameras=CAMERAS)
    assert text.startswith("USER: CAM_FRONT:\n<image>\n") and text.endswith(QUESTION + " ASSISTANT:")
    batch = processor(images=cameras, text=[text], return_tensors="pt")
    per_image = (TinyGMSpec().image_size // TinyGMSpec().patch_size) ** 2
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == len(CAMERAS) * per_image
    _assert_in_order(_non_image_text(processor, batch["input_ids"]), [f"{c}:" for c in CAMERAS] + [QUESTION])


def test_chat_prompt_of_the_tiny_qwen_round_trips_through_its_processor(qwen_gm, cameras):
    processor = _processor(qwen_gm)
    text = render_prompt(processor, QUESTION, fmt="chat", cameras=CAMERAS)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == len(CAMERAS)
    assert text.endswith(QUESTION + "<|im_end|>\n<|im_start|>assistant\n")
    batch = processor(images=cameras, text=[text], return_tensors="pt")
    # 320 x 180 is resized to 112 x 224: an 8 x 16 patch grid, merged 2 x 2 into 32 image tokens.
    assert batch["image_grid_thw"].tolist() == [[1, 8, 16]] * len(CAMERAS)
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == len(CAMERAS) * 32
    _assert_in_order(_non_image_text(processor, batch["input_ids"]), [f"{c}:" for c in CAMERAS] + [QUESTION])


def test_alpaca_renders_the_authors_template(tiny_gm):
    processor = _processor(tiny_gm)
    assert render_prompt(processor, QUESTION, fmt="alpaca", cameras=CAMERAS[:1]) == AUTHORS_ONE_IMAGE
    six = AUTHORS_ONE_IMAGE.replace("<image>\n", "<image>" * 6 + "\n")
    assert render_prompt(processor, QUESTION, fmt="alpaca", cameras=CAMERAS) == six


def test_alpaca_ignores_a_chat_template(chat_gm):
    assert (
        render_prompt(_processor(chat_gm), QUESTION, fmt="alpaca", cameras=CAMERAS[:1]) == AUTHORS_ONE_IMAGE
    )


def test_auto_picks_chat_with_a_template_and_alpaca_without(tiny_gm, chat_gm, qwen_gm):
    assert resolve_format(_processor(tiny_gm), "auto") == "alpaca"
    assert resolve_format(_processor(chat_gm), "auto") == "chat"
    assert resolve_format(_processor(qwen_gm), "auto") == "chat"


def test_an_unknown_prompt_format_is_one_clear_line(chat_gm):
    with pytest.raises(ConfigError, match=r"^prompt format must be one of auto, chat, alpaca, got 'chatml'$"):
        resolve_format(_processor(chat_gm), "chatml")


def test_chat_without_a_template_is_one_clear_line(tiny_gm):
    with pytest.raises(
        ConfigError, match=r"^prompt format 'chat' needs a chat template.*has none; use"
    ) as err:
        render_prompt(_processor(tiny_gm), QUESTION, fmt="chat", cameras=CAMERAS)
    assert "\n" not in str(err.value)


def test_an_empty_question_or_no_cameras_is_refused(chat_gm):
    processor = _processor(chat_gm)
    with pytest.raises(ConfigError, match="question of a prompt is empty"):
        render_prompt(processor, "  ", fmt="chat", cameras=CAMERAS)
    with pytest.raises(ConfigError, match="non-empty sequence of camera names"):
        render_prompt(processor, QUESTION, fmt="chat", cameras=())


# --- prompt hash -------------------------------------------------------------------------------------


def test_prompt_hash_is_stable(chat_gm):
    source = PromptSource.template()
    first = prompt_hash(source, _processor(chat_gm), fmt="auto", cameras=CAMERAS)
    assert prompt_hash(source, _processor(chat_gm), fmt="chat", cameras=CAMERAS) == first


def test_prompt_hash_changes_with_the_chat_template(chat_gm):
    source, processor = PromptSource.template(), _processor(chat_gm)
    before = prompt_hash(source, processor, fmt="chat", cameras=CAMERAS)
    processor.chat_template = processor.chat_template.replace("'ASSISTANT:'", "'ASSISTANT: '")
    assert prompt_hash(source, processor, fmt="chat", cameras=CAMERAS) != before


def test_prompt_hash_changes_with_the_format_and_the_cameras(chat_gm):
    source, processor = PromptSource.template(), _processor(chat_gm)
    chat = prompt_hash(source, processor, fmt="chat", cameras=CAMERAS)
    assert prompt_hash(source, processor, fmt="alpaca", cameras=CAMERAS) != chat
    assert prompt_hash(source, processor, fmt="chat", cameras=CAMERAS[:5]) != chat


def test_prompt_hash_changes_with_the_image_processor_size(tiny_gm, qwen_gm):
    source = PromptSource.template()
    llava = _processor(tiny_gm)
    before = prompt_hash(source, llava, fmt="alpaca", cameras=CAMERAS)
    llava.image_processor.size = {"height": 112, "width": 112}
    assert prompt_hash(source, llava, fmt="alpaca", cameras=CAMERAS) != before
    qwen = _processor(qwen_gm)
    before = prompt_hash(source, qwen, fmt="chat", cameras=CAMERAS)
    qwen.image_processor.size = {"shortest_edge": 16 * 28 * 28, "longest_edge": 64 * 28 * 28}
    assert prompt_hash(source, qwen, fmt="chat", cameras=CAMERAS) != before


def test_prompt_hash_changes_with_an_answer(tiny_gm, tmp_path):
    processor = _processor(tiny_gm)
    one = PromptSource.drivelm(_drivelm(tmp_path / "a.json", answer="Slow down."))
    other = PromptSource.drivelm(_drivelm(tmp_path / "b.json", answer="Speed up."))
    assert prompt_hash(one, processor, fmt="alpaca", cameras=CAMERAS) != prompt_hash(
        other, processor, fmt="alpaca", cameras=CAMERAS
    )


def test_drivelm_keeps_every_item_in_file_order(tmp_path):
    source = PromptSource.drivelm(_drivelm(tmp_path / "qa.json"))
    assert source.items_for("s1") == (
        QAItem("perception", "What is ahead?", "A bus."),
        QAItem("planning", "What should the ego vehicle do?", "Slow down."),
        QAItem("planning", "Why?", None),
    )
    assert source.items_for("unknown") == ()


def _one(source: PromptSource, token: str) -> QAItem:
    (item,) = source.select(token, "one")
    return item


def test_drivelm_answer_belongs_to_the_chosen_question(tmp_path):
    source = PromptSource.drivelm(_drivelm(tmp_path / "qa.json"))
    assert _one(source, "s1") == QAItem("planning", "What should the ego vehicle do?", "Slow down.")
    assert _one(source, "s2").answer == "Going straight."
    assert _one(source, "unknown") == QAItem("template", source.default, None)
    assert _one(PromptSource.template(), "s1").answer is None


def test_select_asks_the_chosen_question_first_then_per_category_or_all(tmp_path):
    source = PromptSource.drivelm(_drivelm(tmp_path / "qa.json"))
    chosen = QAItem("planning", "What should the ego vehicle do?", "Slow down.")
    ahead = QAItem("perception", "What is ahead?", "A bus.")
    assert source.select("s1", "per-category") == (chosen, ahead)
    assert source.select("s1", "all") == (chosen, ahead, QAItem("planning", "Why?", None))
    # Teacher forcing asks only answered questions; a sample without any is asked nothing.
    assert source.select("s1", "all", answered=True) == (chosen, ahead)
    assert PromptSource.template().select("s1", "all", answered=True) == ()


def test_an_unknown_question_mode_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="questions must be one of one, per-category, all, got 'some'"):
        PromptSource.template().select("s1", "some")


def test_drivelm_answer_must_be_a_string(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps({"sc": {"key_frames": {"s1": {"QA": {"planning": [{"Q": "Go?", "A": 3}]}}}}}))
    with pytest.raises(DataError, match=r"key frame 's1'.*'planning' has an answer 'A' that is a int"):
        PromptSource.drivelm(path)


def test_prompt_source_pickles(tmp_path):
    source = PromptSource.drivelm(_drivelm(tmp_path / "qa.json"))
    again = pickle.loads(pickle.dumps(source))
    assert again == source and _one(again, "s1").answer == "Slow down."


# --- the tiny Qwen2-VL -------------------------------------------------------------------------------


def test_tiny_qwen_loads_and_runs_six_cameras_with_the_chat_prompt(qwen_gm, cameras):
    from transformers import AutoModelForImageTextToText, Qwen2VLForConditionalGeneration

    model = AutoModelForImageTextToText.from_pretrained(qwen_gm).eval()
    processor = _processor(qwen_gm)
    assert isinstance(model, Qwen2VLForConditionalGeneration)
    text = render_prompt(processor, QUESTION, fmt="auto", cameras=CAMERAS)
    batch = processor(images=cameras, text=[text], return_tensors="pt")
    with torch.inference_mode():
        out = model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == 4 + 1
    assert out.hidden_states[-1].shape == (1, batch["input_ids"].shape[1], 128)
    assert _decoder_layers(model, 4) is model.model.language_model.layers


def test_tiny_qwen_is_marked_as_a_stand_in(qwen_gm):
    marker = json.loads((qwen_gm / STAND_IN_FILE).read_text())
    assert marker["arch"] == "qwen2-vl" and marker["kind"] == "random-weight stand-in"


def test_cli_gm_tiny_builds_the_qwen_arch(tmp_path):
    out = tmp_path / "qwen"
    result = CliRunner().invoke(gm_app, ["tiny", "--arch", "qwen2-vl", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "tiny qwen2-vl GM (random-weight stand-in" in result.output
    assert json.loads((out / STAND_IN_FILE).read_text())["arch"] == "qwen2-vl"


def test_cli_gm_tiny_refuses_an_unknown_arch(tmp_path, capsys):
    assert main(["gm", "tiny", "--arch", "qwen", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == "error: tiny GM arch must be one of llava, qwen2-vl, got 'qwen'"


def test_a_spec_of_the_other_arch_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="arch 'qwen2-vl' takes a TinyQwenSpec, got a TinyGMSpec"):
        build_tiny_gm(tmp_path / "x", arch="qwen2-vl", spec=TinyGMSpec())
