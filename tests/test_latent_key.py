"""The latent key's one comparison: strict, but for the authors' teacher-forced-then-generated pairing."""

from __future__ import annotations

import dataclasses

import pytest

from netroller.errors import CacheError, CacheKeyMismatchError
from netroller.storage.schema import TEACHER_FORCED_ON_GENERATED, LatentKey

TRAINED = LatentKey(
    model="gm",
    model_hash="w",
    processor_hash="p",
    prompt_hash="q",
    tokens=8,
    hidden_size=128,
    dtype="float16",
    layers=(0, 3),
    compute_dtype="bfloat16",
    attn_implementation="sdpa",
    latents="teacher-forced",
    decode="none",
    questions="one",
)
GENERATED = dataclasses.replace(
    TRAINED, latents="generated", decode="sample(temperature=0.1,top_p=0.75,seed=0)", layers=(0, 1, 2, 3)
)


def test_a_teacher_forced_run_is_evaluated_on_generated_latents_and_says_so():
    assert TRAINED.check(GENERATED, where="cache c", evaluating=True) == TEACHER_FORCED_ON_GENERATED


def test_the_pairing_is_refused_outside_evaluation():
    with pytest.raises(
        CacheKeyMismatchError, match="cache c: latents: the run was trained with 'teacher-forced'"
    ):
        TRAINED.check(GENERATED, where="cache c")


def test_a_generated_run_is_not_evaluated_on_teacher_forced_latents():
    with pytest.raises(CacheKeyMismatchError, match="latents: the run was trained with 'generated'"):
        dataclasses.replace(GENERATED, layers=(0, 3)).check(TRAINED, where="cache c", evaluating=True)


@pytest.mark.parametrize(
    ("field", "value"),
    [("prompt_hash", "other"), ("tokens", 4), ("compute_dtype", "float32"), ("model_hash", "v")],
)
def test_every_other_difference_is_still_refused_in_the_pairing(field, value):
    with pytest.raises(CacheKeyMismatchError, match=f"cache c: {field}:"):
        TRAINED.check(dataclasses.replace(GENERATED, **{field: value}), where="cache c", evaluating=True)


def test_equal_keys_pass_without_a_pairing():
    assert GENERATED.check(GENERATED, where="cache c") is None


def test_a_key_recorded_before_the_gm_fields_reads_as_what_the_code_then_did():
    old = {
        k: v
        for k, v in TRAINED.to_dict().items()
        if k not in ("compute_dtype", "attn_implementation", "latents", "decode", "questions")
    }
    key = LatentKey.from_dict(old)
    assert (key.compute_dtype, key.attn_implementation, key.latents, key.decode, key.questions) == (
        "float32",
        "sdpa",
        "generated",
        "greedy",
        "one",
    )


def test_an_unknown_latent_kind_is_a_cache_error():
    with pytest.raises(CacheError, match="latents must be one of generated, teacher-forced, got 'x'"):
        LatentKey.from_dict({**TRAINED.to_dict(), "latents": "x"})


def test_a_mismatch_names_the_field_and_more_layers_are_fine():
    with pytest.raises(CacheKeyMismatchError, match="tokens: the run was trained with 8, the latents have 1"):
        TRAINED.check(dataclasses.replace(TRAINED, tokens=1), where="cache")
    with pytest.raises(CacheKeyMismatchError, match="layers: the run was trained on GM layers"):
        TRAINED.check(dataclasses.replace(TRAINED, layers=(3,)), where="cache")
    assert TRAINED.check(dataclasses.replace(TRAINED, layers=(0, 1, 2, 3)), where="cache") is None
    assert LatentKey.from_dict(TRAINED.to_dict()) == TRAINED
