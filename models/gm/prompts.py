"""What the GM is asked: one template question for every sample, or per-sample DriveLM questions.

The question is wrapped Alpaca-style, as LLaMA-Adapter V2 (the paper's GM) is prompted, with the camera
images as the processor's image tokens at the start of the instruction:

    Below is an instruction that describes a task. ...
    ### Instruction:
    <image><image><image><image><image><image>
    {question}

    ### Response:

The wrapper and every question are part of `PromptSource.hash()`, hence of the cache key.

DriveLM format: {scene_token: {"key_frames": {sample_token: {"QA": {"perception": [{"Q": ..., "A": ...}],
"prediction": [...], "planning": [...], "behavior": [...]}}}}}. A sample gets its first planning question,
else its first question in file order; samples without one get the fallback template.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from netroller.errors import ConfigError, DataError, MissingPathError

DEFAULT_TEMPLATE = (
    "What are the important objects in the current scene? "
    "Based on them, what should the ego vehicle do next, and why?"
)

ALPACA_WRAPPER = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{images}\n{question}\n\n### Response:"
)


def format_prompt(question: str, *, image_token: str, num_images: int) -> str:
    """The full GM prompt: the Alpaca wrapper around `num_images` image tokens and the question."""
    return ALPACA_WRAPPER.format(images=image_token * num_images, question=question.strip())


@dataclass(frozen=True)
class PromptSource:
    """Gives each sample its question; build with `PromptSource.template` or `PromptSource.drivelm`."""

    default: str
    """The question for samples without their own."""
    per_sample: Mapping[str, str] = field(default_factory=dict)
    """sample_token -> question (from DriveLM)."""
    origin: str = "template"
    """Where the questions came from, for messages and provenance."""

    def __post_init__(self) -> None:
        if not self.default.strip():
            raise ConfigError("prompt template must not be empty")
        object.__setattr__(self, "per_sample", MappingProxyType(dict(self.per_sample)))

    @classmethod
    def template(cls, text: str | None = None) -> PromptSource:
        """One question for every sample: `text`, or `DEFAULT_TEMPLATE`."""
        return cls(default=DEFAULT_TEMPLATE if text is None else text, origin="template")

    @classmethod
    def drivelm(cls, path: Path, fallback: str | None = None) -> PromptSource:
        """Per-sample questions from a DriveLM-format JSON; `fallback` (or the default) for the rest."""
        path = Path(path)
        if not path.is_file():
            raise MissingPathError(f"DriveLM file {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"DriveLM file {path} is not valid JSON: {err}") from err
        questions = _drivelm_questions(data, path)
        if not questions:
            raise DataError(f"DriveLM file {path} holds no questions")
        return cls(
            default=DEFAULT_TEMPLATE if fallback is None else fallback, per_sample=questions, origin=str(path)
        )

    def prompt_for(self, sample_token: str) -> str:
        """The question for `sample_token` (not yet wrapped: see `format_prompt`)."""
        return self.per_sample.get(sample_token, self.default)

    def hash(self) -> str:
        """sha256 over the wrapper, the default question and every per-sample question."""
        payload = {
            "wrapper": ALPACA_WRAPPER,
            "default": self.default,
            "per_sample": sorted(self.per_sample.items()),
        }
        return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


def _drivelm_questions(data: object, path: Path) -> dict[str, str]:
    if not isinstance(data, dict):
        raise DataError(
            f"DriveLM file {path}: top level must be an object of scenes, got {type(data).__name__}"
        )
    questions: dict[str, str] = {}
    for scene, entry in data.items():
        frames = entry.get("key_frames") if isinstance(entry, dict) else None
        if not isinstance(frames, dict):
            raise DataError(f"DriveLM file {path}: scene {scene!r} has no 'key_frames' object")
        for sample, frame in frames.items():
            qa = frame.get("QA") if isinstance(frame, dict) else None
            if not isinstance(qa, dict):
                raise DataError(f"DriveLM file {path}: key frame {sample!r} has no 'QA' object")
            question = _pick_question(qa, where=f"DriveLM file {path}: key frame {sample!r}")
            if question is not None:
                questions[sample] = question
    return questions


def _pick_question(qa: dict, *, where: str) -> str | None:
    """The first planning question, else the first question of any category, else None."""
    for category, items in qa.items():
        if not isinstance(items, list) or not all(
            isinstance(it, dict) and isinstance(it.get("Q"), str) for it in items
        ):
            raise DataError(f"{where}: QA category {category!r} must be a list of objects with a string 'Q'")
    order = (["planning"] if "planning" in qa else []) + [c for c in qa if c != "planning"]
    for category in order:
        for item in qa[category]:
            if item["Q"].strip():
                return item["Q"].strip()
    return None
