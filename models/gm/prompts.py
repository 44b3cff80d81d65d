"""What the GM is asked and how the question is written out: questions and answers per sample, and the
prompt text the processor is called with.

Two prompt formats (`PromptFormat`; "auto" = "chat" when the processor has a chat template, else "alpaca"):
- "chat": one user message through the processor's chat template, each camera's name as text beside its
  image, then the question; rendered with the generation prompt, so the text ends where the answer starts.
- "alpaca": the Alpaca `prompt_no_input` template LLaMA-Adapter V2 (the paper's GM) is prompted with, as the
  authors build it: their instruction is "<image>\\n" + the DriveLM question. The Hugging Face processor
  needs one image token per image, so the image slot holds the processor's image token once per camera (the
  LLaMA-Adapter backend keeps the authors' plain "<image>" once: its images enter through the adapter):

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    <image><image><image><image><image><image>
    {question}

    ### Response:

`prompt_hash` (part of the cache key) covers the resolved format, the rendered prompt of a fixed probe
question (so a changed chat template or image token changes it), every question and answer, and the image
processor's settings.

DriveLM format: {scene_token: {"key_frames": {sample_token: {"QA": {"perception": [{"Q": ..., "A": ...}],
"prediction": [...], "planning": [...], "behavior": [...]}}}}}. Each sample keeps its QA items in file order
(`items_for`); `select` gives the questions it is asked (one cache row each) under `--questions one` (its
first planning item, else its first item), `per-category` or `all`; samples without items get the fallback
template and no answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

from netroller.errors import ConfigError, DataError, MissingPathError, ModelError
from netroller.storage.schema import QUESTION_MODES

DEFAULT_TEMPLATE = (
    "What are the important objects in the current scene? "
    "Based on them, what should the ego vehicle do next, and why?"
)

# LLaMA-Adapter V2's `prompt_no_input`, the image slot where the authors' instruction has its "<image>".
ALPACA_WRAPPER = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{images}\n{question}\n\n### Response:"
)

PromptFormat = Literal["auto", "chat", "alpaca"]
TEMPLATE_CATEGORY = "template"  # the category of the default question, asked where a sample has none
ResolvedFormat = Literal["chat", "alpaca"]

# Rendered into the prompt hash: any change to how a prompt is written out changes the cache key.
_PROBE_QUESTION = "What should the ego vehicle do next?"


def chat_template_of(processor: Any) -> str | None:
    """The processor's chat template, else its tokenizer's; None when neither has one."""
    for owner in (processor, getattr(processor, "tokenizer", None)):
        template = getattr(owner, "chat_template", None)
        if isinstance(template, dict):  # several named templates: the one apply_chat_template would use
            template = template.get("default")
        if isinstance(template, str) and template.strip():
            return template
    return None


def resolve_format(processor: Any, fmt: str) -> ResolvedFormat:
    """The format `fmt` stands for, "chat" or "alpaca" ("auto": chat when the processor has a chat template);
    ConfigError for an unknown format or "chat" asked of a processor without a template."""
    if fmt not in get_args(PromptFormat):
        raise ConfigError(f"prompt format must be one of {', '.join(get_args(PromptFormat))}, got {fmt!r}")
    has_template = chat_template_of(processor) is not None
    if fmt == "chat" and not has_template:
        raise ConfigError(
            f"prompt format 'chat' needs a chat template, and the {type(processor).__name__} of this GM has none; "
            "use --prompt-format alpaca (or auto)"
        )
    if fmt == "auto":
        return "chat" if has_template else "alpaca"
    return fmt  # type: ignore[return-value]  # "chat" or "alpaca", checked above


def render_prompt(processor: Any, question: str, *, fmt: str, cameras: Sequence[str]) -> str:
    """The whole prompt text for `processor(images=<one image per camera>, text=[...])`, ending where the GM's
    answer starts. `cameras` names the images in the order they are passed; `question` is used as given."""
    if isinstance(cameras, str) or not cameras:
        raise ConfigError(f"a prompt needs a non-empty sequence of camera names, got {cameras!r}")
    if not question.strip():
        raise ConfigError("the question of a prompt is empty")
    if resolve_format(processor, fmt) == "alpaca":
        return ALPACA_WRAPPER.format(images=_image_slot(processor, len(cameras)), question=question)
    content: list[dict[str, str]] = []
    for camera in cameras:
        content += [{"type": "text", "text": f"{camera}:"}, {"type": "image"}]
    content.append({"type": "text", "text": question})
    messages = [{"role": "user", "content": content}]
    try:
        return processor.apply_chat_template(
            messages, chat_template=chat_template_of(processor), add_generation_prompt=True, tokenize=False
        )
    except Exception as err:  # jinja raises its own TemplateError family; one line for the user either way
        raise ModelError(
            f"the chat template of this GM's {type(processor).__name__} fails to render: {err}"
        ) from err


def _image_slot(processor: Any, n_images: int) -> str:
    """The Alpaca prompt's image slot: the processor's own fixed slot when it has one (LLaMA-Adapter's plain
    "<image>", its images entering through the adapter), else its image token once per image."""
    slot = getattr(processor, "alpaca_image_slot", None)
    if isinstance(slot, str) and slot:
        return slot
    image_token = getattr(processor, "image_token", None)
    if not isinstance(image_token, str) or not image_token:
        raise ModelError(
            f"the {type(processor).__name__} of this GM has no image_token; cannot place the camera images"
        )
    return image_token * n_images


@dataclass(frozen=True)
class QAItem:
    """One DriveLM question of a sample, with its ground-truth answer when the file has one."""

    category: str
    """The QA category it is listed under ("perception", "prediction", "planning", "behavior", ...)."""
    question: str
    """The question, stripped of surrounding whitespace (never empty)."""
    answer: str | None
    """The answer as written in the file ("A"), or None when the file gives none."""


@dataclass(frozen=True)
class PromptSource:
    """Gives each sample its questions; build with `PromptSource.template` or `PromptSource.drivelm`."""

    default: str
    """The question for samples without their own."""
    qa: Mapping[str, tuple[QAItem, ...]] = field(default_factory=dict)
    """sample_token -> its QA items in file order (categories, then items); only samples that have some."""
    origin: str = "template"
    """Where the questions came from, for messages and provenance."""

    def __post_init__(self) -> None:
        if not self.default.strip():
            raise ConfigError("prompt template must not be empty")
        qa = {sample: tuple(items) for sample, items in self.qa.items() if items}
        object.__setattr__(self, "qa", MappingProxyType(qa))

    def __reduce__(self):
        # Mapping proxies do not pickle; rebuild from plain dicts (Ray and worker processes receive these).
        return (PromptSource, (self.default, dict(self.qa), self.origin))

    @classmethod
    def template(cls, text: str | None = None) -> PromptSource:
        """One question for every sample: `text`, or `DEFAULT_TEMPLATE`; no answers."""
        return cls(default=DEFAULT_TEMPLATE if text is None else text, origin="template")

    @classmethod
    def drivelm(cls, path: Path, fallback: str | None = None) -> PromptSource:
        """Per-sample questions and answers from a DriveLM-format JSON; `fallback` (or the default) for the rest."""
        path = Path(path)
        if not path.is_file():
            raise MissingPathError(f"DriveLM file {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"DriveLM file {path} is not valid JSON: {err}") from err
        qa = _drivelm_items(data, path)
        if not qa:
            raise DataError(f"DriveLM file {path} holds no questions")
        return cls(default=DEFAULT_TEMPLATE if fallback is None else fallback, qa=qa, origin=str(path))

    def items_for(self, sample_token: str) -> tuple[QAItem, ...]:
        """The sample's QA items in file order; empty for a sample without any."""
        return self.qa.get(sample_token, ())

    def select(self, sample_token: str, mode: str, *, answered: bool = False) -> tuple[QAItem, ...]:
        """The questions `sample_token` is asked under `mode`, one cache row each, the chosen one first (the
        first planning item, else the first item: what "one" asks, and what eval reads):
        - "one": the chosen item;
        - "per-category": the chosen item, then the first item of every other category, in file order;
        - "all": the chosen item, then every other item, in file order.
        A sample without items is asked the default question (category "template", no answer).
        `answered=True` (teacher forcing) considers only items with an answer; a sample without any gets ()."""
        if mode not in QUESTION_MODES:
            raise ConfigError(f"questions must be one of {', '.join(QUESTION_MODES)}, got {mode!r}")
        items = self.items_for(sample_token)
        if answered:
            items = tuple(it for it in items if it.answer is not None)
            if not items:
                return ()
        if not items:
            return (QAItem(category=TEMPLATE_CATEGORY, question=self.default, answer=None),)
        chosen = _choose(items)
        if mode == "one":
            return (chosen,)
        rest = [it for it in items if it is not chosen]
        if mode == "per-category":
            seen = {chosen.category}
            firsts = []
            for it in rest:
                if it.category not in seen:
                    seen.add(it.category)
                    firsts.append(it)
            rest = firsts
        return (chosen, *rest)


def prompt_hash(source: PromptSource, processor: Any, *, fmt: str, cameras: Sequence[str]) -> str:
    """sha256 of everything that decides the GM's text input: the resolved format, the rendered prompt of a
    fixed probe question, the cameras, the default question, every sample's questions and answers, and the
    image processor's settings (`to_dict()`) when the processor has one."""
    resolved = resolve_format(processor, fmt)
    image_processor = getattr(processor, "image_processor", None)
    to_dict = getattr(image_processor, "to_dict", None)
    payload = {
        "format": resolved,
        "probe": render_prompt(processor, _PROBE_QUESTION, fmt=resolved, cameras=cameras),
        "cameras": list(cameras),
        "default": source.default,
        "qa": [
            [sample, [[it.category, it.question, it.answer] for it in items]]
            for sample, items in sorted(source.qa.items())
        ],
        "image_processor": to_dict() if callable(to_dict) else None,
    }
    # default=str: settings such as resampling enums or tuples have no JSON form of their own.
    text = json.dumps(payload, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _choose(items: tuple[QAItem, ...]) -> QAItem:
    """The first planning item, else the first item."""
    return next((it for it in items if it.category == "planning"), items[0])


def _drivelm_items(data: object, path: Path) -> dict[str, tuple[QAItem, ...]]:
    if not isinstance(data, dict):
        raise DataError(
            f"DriveLM file {path}: top level must be an object of scenes, got {type(data).__name__}"
        )
    qa: dict[str, tuple[QAItem, ...]] = {}
    for scene, entry in data.items():
        frames = entry.get("key_frames") if isinstance(entry, dict) else None
        if not isinstance(frames, dict):
            raise DataError(f"DriveLM file {path}: scene {scene!r} has no 'key_frames' object")
        for sample, frame in frames.items():
            frame_qa = frame.get("QA") if isinstance(frame, dict) else None
            if not isinstance(frame_qa, dict):
                raise DataError(f"DriveLM file {path}: key frame {sample!r} has no 'QA' object")
            items = _frame_items(frame_qa, where=f"DriveLM file {path}: key frame {sample!r}")
            if items:
                qa[sample] = items
    return qa


def _frame_items(frame_qa: dict, *, where: str) -> tuple[QAItem, ...]:
    """A key frame's items in file order; blank questions are skipped (there is nothing to ask)."""
    items = []
    for category, entries in frame_qa.items():
        if not isinstance(entries, list) or not all(
            isinstance(it, dict) and isinstance(it.get("Q"), str) for it in entries
        ):
            raise DataError(f"{where}: QA category {category!r} must be a list of objects with a string 'Q'")
        for entry in entries:
            answer = entry.get("A")
            if answer is not None and not isinstance(answer, str):
                raise DataError(
                    f"{where}: QA category {category!r} has an answer 'A' that is a "
                    f"{type(answer).__name__}, not a string"
                )
            if entry["Q"].strip():
                items.append(QAItem(category=category, question=entry["Q"].strip(), answer=answer))
    return tuple(items)
