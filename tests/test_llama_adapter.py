"""The LLaMA-Adapter V2 backend: its released files, loading, capture, parity with the authors' recorded
outputs (tests/fixtures/llama_adapter/README.md), bad input, and a harvest into the cache."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from netroller.cli.gm_cmd import gm_app
from netroller.data.index import CAMERAS
from netroller.errors import ConfigError, ModelError
from netroller.models.gm.capture import CaptureSpec, Decoding, Query
from netroller.models.gm.llama_adapter.capture import AdapterCapturer
from netroller.models.gm.llama_adapter.llama import TokenBatch
from netroller.models.gm.llama_adapter.tiny import TinyAdapterSpec
from netroller.models.gm.loader import inspect_gm, load_gm, load_processor
from netroller.models.gm.prompts import PromptSource, prompt_hash, render_prompt
from netroller.models.gm.tiny import STAND_IN_FILE, build_tiny_gm
from netroller.storage.schema import CacheKey, LatentKey

FIXTURE = Path(__file__).parent / "fixtures" / "llama_adapter" / "official_tiny.npz"
QUESTION = "What should the ego vehicle do next?"
ANSWER = "The traffic light is green, keep going straight at the current speed."
FILES = ("params.json", "consolidated.00.pth", "tokenizer.model", "llama_adapter.pth", "clip.pt")


@pytest.fixture(scope="module")
def gm(tiny_llama_adapter):
    return load_gm(str(tiny_llama_adapter))


@pytest.fixture(scope="module")
def official():
    return np.load(FIXTURE)


def _cameras(seed: int, n: int = 6) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        img = np.zeros((90, 160, 3), dtype=np.uint8)
        img[:45] = rng.integers(100, 220, 3)
        img[45:] = rng.integers(30, 120, 3)
        for _ in range(3):
            y, x = rng.integers(20, 70), rng.integers(0, 140)
            img[y : y + 15, x : x + 20] = rng.integers(0, 255, 3)
        frames.append(Image.fromarray(img))
    return frames


def _capturer(gm, **kw) -> AdapterCapturer:
    return AdapterCapturer(gm, cameras=CAMERAS, **{"layers": "all", **kw})


def _forward(gm, images, ids: list[int]) -> np.ndarray:
    """[L, S, H]: every block's output at every position of one uncached forward over `ids`."""
    tokens = torch.tensor([ids])
    positions = torch.arange(len(ids))[None]
    with torch.inference_mode():
        visual = gm.model.encode_images(gm.processor.images(images)[None])
        out = gm.model(TokenBatch(tokens, positions, positions), visual, layers=tuple(range(4)), logits=False)
    return out.hidden[0].numpy()


def _prompt_ids(gm, question: str, n_images: int = 6) -> list[int]:
    text = render_prompt(gm.processor, question, fmt="alpaca", cameras=CAMERAS[:n_images])
    return gm.processor.tokenizer.encode(text, bos=True, eos=False)


def _copy(folder: Path, tmp_path: Path, drop: str | None = None) -> Path:
    """The tiny folder as symlinks (files a test replaces are written over the link)."""
    out = tmp_path / "la"
    out.mkdir()
    for f in folder.iterdir():
        if f.name != drop:
            (out / f.name).symlink_to(f)
    return out


def _replace(path: Path, obj) -> None:
    path.unlink()
    torch.save(obj, path)


# --- the files --------------------------------------------------------------------------------------


def test_tiny_build_writes_the_released_files_marked_as_a_stand_in(tiny_llama_adapter):
    assert all((tiny_llama_adapter / name).is_file() for name in FILES)
    assert json.loads((tiny_llama_adapter / STAND_IN_FILE).read_text())["kind"] == "random-weight stand-in"
    params = json.loads((tiny_llama_adapter / "params.json").read_text())
    assert params == {
        "dim": 64,
        "multiple_of": 32,
        "n_heads": 4,
        "n_layers": 4,
        "norm_eps": 1e-05,
        "vocab_size": -1,
    }
    adapter = torch.load(tiny_llama_adapter / "llama_adapter.pth")
    assert adapter["config"] == {"w_bias": True, "w_lora": False, "lora_rank": 16}
    assert adapter["model"]["adapter_query.weight"].shape == (4 * 3, 64)


def test_same_seed_builds_identical_files(tiny_llama_adapter, tmp_path):
    again = build_tiny_gm(tmp_path / "again", arch="llama-adapter")
    for name in FILES:
        assert (again / name).read_bytes() == (tiny_llama_adapter / name).read_bytes(), name


def test_inspect_reads_the_backend_and_the_sizes_from_the_folder(tiny_llama_adapter):
    info = inspect_gm(str(tiny_llama_adapter))
    assert (info.backend, info.num_layers, info.hidden_size) == ("llama-adapter", 4, 64)
    assert info.is_random_stand_in and info.channel_order == "bgr"
    assert info.model_hash and info.processor_hash and info.model_hash != info.processor_hash
    assert inspect_gm(f"llama-adapter:{tiny_llama_adapter}") == info


def test_naming_the_hf_backend_for_a_llama_adapter_folder_is_refused(tiny_llama_adapter):
    with pytest.raises(ModelError, match="has no config.json"):
        inspect_gm(f"hf:{tiny_llama_adapter}")


def test_load_gm_in_bfloat16_computes_in_it(tiny_llama_adapter, gm):
    half = load_gm(str(tiny_llama_adapter), dtype="bfloat16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    images = _cameras(0)
    ours = _capturer(half, tokens=1).capture(images, QUESTION)
    ref = _capturer(gm, tokens=1).capture(images, QUESTION)
    np.testing.assert_allclose(ours.hidden, ref.hidden, atol=0.15 * np.abs(ref.hidden).max())


def test_cli_gm_tiny_format_llama_adapter_and_info(tmp_path):
    runner = CliRunner()
    out = tmp_path / "la"
    built = runner.invoke(gm_app, ["tiny", "--format", "llama-adapter", "--out", str(out)])
    assert built.exit_code == 0, built.output
    assert "random-weight stand-in" in built.output and all((out / n).is_file() for n in FILES)
    info = runner.invoke(gm_app, ["info", "--model", str(out)])
    assert info.exit_code == 0, info.output
    assert "backend      llama-adapter" in info.output and "LlamaAdapterV2" in info.output


# --- capture ----------------------------------------------------------------------------------------


def test_prompt_is_the_authors_alpaca_with_one_image_slot(gm):
    text = render_prompt(gm.processor, QUESTION, fmt="auto", cameras=CAMERAS)
    assert text == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        f"request.\n\n### Instruction:\n<image>\n{QUESTION}\n\n### Response:"
    )
    with pytest.raises(ConfigError, match="prompt format 'chat' needs a chat template"):
        _capturer(gm, tokens=1, prompt_format="chat")


def test_prefill_capture_equals_a_direct_forward(gm):
    images = _cameras(1)
    cap = _capturer(gm, tokens=1).capture(images, QUESTION)
    ref = _forward(gm, images, _prompt_ids(gm, QUESTION))
    assert cap.hidden.shape == (4, 1, 64) and cap.length == 1 and cap.token_ids.shape == (0,)
    np.testing.assert_allclose(cap.hidden[:, 0], ref[:, -1], rtol=1e-5, atol=1e-5)


def test_generated_latents_and_greedy_tokens_equal_uncached_forwards(gm):
    images = _cameras(2)
    cap = _capturer(gm, tokens=6, stop_at_eos=False).capture(images, QUESTION)
    ids = _prompt_ids(gm, QUESTION)
    p = len(ids)
    for token in cap.token_ids.tolist():  # greedy: each token is the argmax after an uncached forward
        with torch.inference_mode():
            visual = gm.model.encode_images(gm.processor.images(images)[None])
            pos = torch.arange(len(ids))[None]
            logits = gm.model(TokenBatch(torch.tensor([ids]), pos, pos[:, -1:]), visual, layers=(3,)).logits
        assert int(logits.argmax()) == token
        ids.append(token)
    ref = _forward(gm, images, ids)
    assert cap.length == 6
    np.testing.assert_allclose(cap.hidden, ref[:, p - 1 :], rtol=1e-5, atol=1e-5)


def test_teacher_forced_latents_equal_one_forward_over_prompt_and_answer(gm):
    images = _cameras(3)
    cap = _capturer(gm, tokens=8, layers="1,3", latents="teacher-forced").capture(
        images, QUESTION, answer=ANSWER
    )
    prompt = render_prompt(gm.processor, QUESTION, fmt="alpaca", cameras=CAMERAS)
    full = gm.processor.tokenizer.encode(prompt + ANSWER, bos=True, eos=False)
    p = len(_prompt_ids(gm, QUESTION))
    assert cap.length == 8 and cap.token_ids.tolist() == full[p : p + 7]
    ref = _forward(gm, images, full)
    np.testing.assert_allclose(cap.hidden, ref[[1, 3], p - 1 : p + 7], rtol=1e-5, atol=1e-5)


def test_teacher_forced_short_answer_gives_a_shorter_length(gm):
    cap = _capturer(gm, tokens=64, latents="teacher-forced").capture(_cameras(4), QUESTION, answer="Stop.")
    n = int((cap.token_ids >= 0).sum())
    assert cap.length == 1 + n < 64 and not cap.hidden[:, cap.length :].any()


def test_eos_stops_early_and_zero_pads(gm, official):
    images = [Image.fromarray(a) for a in official["s2_images"]]  # this sample answers EOS after 3 tokens
    cap = _capturer(gm, tokens=8).capture(images, QUESTION)
    full = _capturer(gm, tokens=8, stop_at_eos=False).capture(images, QUESTION)
    assert cap.length == 4 and full.length == 8
    assert not cap.hidden[:, 4:].any() and (cap.token_ids[3:] == -1).all()
    np.testing.assert_allclose(cap.hidden[:, :4], full.hidden[:, :4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("latents", ["generated", "teacher-forced"])
def test_batch_equals_per_sample(gm, latents):
    queries = [
        Query(_cameras(10), "Stop?", "Yes, the light is red."),
        Query(_cameras(11, n=4), QUESTION, ANSWER),  # fewer cameras: encoded apart, decoded together
        Query(_cameras(12), "Is there a pedestrian crossing in front of the ego car?", "No."),
    ]
    capturer = _capturer(gm, tokens=6, latents=latents)
    for q, batched in zip(queries, capturer.capture_batch(queries), strict=True):
        one = capturer.capture(q.images, q.question, answer=q.answer)
        assert one.length == batched.length
        np.testing.assert_array_equal(one.token_ids, batched.token_ids)
        np.testing.assert_allclose(one.hidden, batched.hidden, rtol=1e-5, atol=1e-5)


def test_sampled_answers_are_reproducible_per_sample_whatever_the_batch(gm):
    decoding = Decoding(mode="sample", temperature=1.0, top_p=0.9, seed=3)
    capturer = _capturer(gm, tokens=8, decoding=decoding, stop_at_eos=False)
    queries = [Query(_cameras(20 + i), QUESTION, key=f"tok{i}") for i in range(3)]
    batched = capturer.capture_batch(queries)
    alone = capturer.capture(queries[1].images, QUESTION, key="tok1")
    np.testing.assert_array_equal(alone.token_ids, batched[1].token_ids)
    greedy = _capturer(gm, tokens=8, stop_at_eos=False).capture(queries[1].images, QUESTION)
    assert capturer.decode == "sample(temperature=1,top_p=0.9,seed=3)"
    assert not np.array_equal(greedy.token_ids, alone.token_ids)


def test_capture_spec_builds_the_adapter_capturer(tiny_llama_adapter):
    spec = CaptureSpec(
        model=f"llama-adapter:{tiny_llama_adapter}",
        device="cpu",
        compute_dtype="float32",
        attn_implementation="eager",
        layers=(0, 3),
        tokens=2,
        cameras=CAMERAS,
        latents="generated",
        decoding=Decoding(),
        prompt_format="auto",
        channel_order="rgb",
    )
    capturer = spec.capturer()
    assert (
        isinstance(capturer, AdapterCapturer) and capturer.gm.processor.image_processor.channel_order == "rgb"
    )
    assert capturer.capture(_cameras(5), QUESTION).hidden.shape == (2, 2, 64)


# --- parity with the authors' code (recorded) -------------------------------------------------------


def test_fixture_was_recorded_on_this_tiny_build(tiny_llama_adapter, official):
    recorded = json.loads(str(official["tiny_files_sha256"]))
    for name, digest in recorded.items():
        found = hashlib.sha256((tiny_llama_adapter / name).read_bytes()).hexdigest()
        assert found == digest, f"{name} differs from the fixture's build: re-record (fixture README)"


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("sample", [0, 1, 2])
def test_latents_and_tokens_equal_the_authors_code(tiny_llama_adapter, official, sample, kernel):
    gm = load_gm(str(tiny_llama_adapter), attn_implementation=kernel)
    images = [Image.fromarray(a) for a in official[f"s{sample}_images"]]
    question, answer = str(official["questions"][sample]), str(official["answers"][sample])
    pixels = gm.processor.images(images)[None]  # the authors' cv2.imread (BGR) + transform, bit for bit
    assert hashlib.sha256(pixels.numpy().tobytes()).hexdigest() == str(
        official[f"s{sample}_image_tensor_sha256"]
    )
    tokens = int(official["tokens"])
    gen = _capturer(gm, tokens=tokens).capture(images, question)
    theirs = official[f"s{sample}_generated_hidden"]  # [L, steps, H]: their generate's per-step states
    assert gen.length == theirs.shape[1]
    np.testing.assert_allclose(gen.hidden[:, : gen.length], theirs, rtol=0, atol=1e-5)
    kept = gen.token_ids[: gen.length - 1].tolist()
    assert kept == official[f"s{sample}_generated_tokens"][: gen.length - 1].tolist()
    forced = _capturer(gm, tokens=int(official["forced_tokens_T"]), latents="teacher-forced")
    tf = forced.capture(images, question, answer=answer)
    theirs = official[f"s{sample}_forced_hidden"]  # at their labels' valid positions
    assert tf.length == theirs.shape[1]
    np.testing.assert_allclose(tf.hidden[:, : tf.length], theirs, rtol=0, atol=1e-5)
    prompt_len = official[f"s{sample}_prompt_tokens"].shape[0]
    answer_ids = official[f"s{sample}_forced_tokens"][prompt_len : prompt_len + tf.length - 1]
    assert tf.token_ids[: tf.length - 1].tolist() == answer_ids.tolist()


# --- other forms of the files -----------------------------------------------------------------------


def test_two_model_parallel_shards_load_as_one(tiny_llama_adapter, gm, tmp_path):
    folder = _copy(tiny_llama_adapter, tmp_path, drop="consolidated.00.pth")
    state = torch.load(tiny_llama_adapter / "consolidated.00.pth")
    shards: list[dict] = [{}, {}]
    for name, t in state.items():  # fairscale: column-parallel on dim 0, row-parallel on dim 1
        if name.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight", "output.weight")):
            parts = t.chunk(2, dim=0)
        elif name.endswith(("wo.weight", "w2.weight", "tok_embeddings.weight")):
            parts = t.chunk(2, dim=1)
        else:
            parts = (t, t)
        for shard, part in zip(shards, parts, strict=True):
            shard[name] = part.clone()
    for i, shard in enumerate(shards):
        torch.save(shard, folder / f"consolidated.0{i}.pth")
    images = _cameras(6)
    joined = _capturer(load_gm(str(folder)), tokens=3).capture(images, QUESTION)
    np.testing.assert_array_equal(joined.hidden, _capturer(gm, tokens=3).capture(images, QUESTION).hidden)


def test_clip_as_a_torchscript_archive_loads_like_the_state_dict(gm, tmp_path):
    scripted = build_tiny_gm(
        tmp_path / "jit", arch="llama-adapter", spec=TinyAdapterSpec(clip_torchscript=True)
    )
    images = _cameras(7)
    got = _capturer(load_gm(str(scripted)), tokens=2).capture(images, QUESTION)
    np.testing.assert_array_equal(got.hidden, _capturer(gm, tokens=2).capture(images, QUESTION).hidden)


def test_rgb_order_changes_the_latents_and_the_prompt_hash(tiny_llama_adapter, gm):
    rgb = load_gm(str(tiny_llama_adapter), channel_order="rgb")
    images = _cameras(8)
    a = _capturer(gm, tokens=1).capture(images, QUESTION)
    b = _capturer(rgb, tokens=1).capture(images, QUESTION)
    assert not np.allclose(a.hidden, b.hidden)
    source = PromptSource.template()
    hashes = {
        order: prompt_hash(
            source,
            load_processor(inspect_gm(str(tiny_llama_adapter), channel_order=order, fingerprint=False)),
            fmt="auto",
            cameras=CAMERAS,
        )
        for order in ("bgr", "rgb")
    }
    assert hashes["bgr"] != hashes["rgb"]


# --- bad input: one line naming the file and the mismatch -------------------------------------------


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("params.json", "params.json is missing"),
        ("tokenizer.model", "tokenizer.model is missing"),
        ("consolidated.00.pth", r"consolidated.00.pth \(LLaMA-2's weights\) is missing"),
        ("llama_adapter.pth", r"the LLaMA-Adapter checkpoint \(a .pth such as BIAS-7B.pth\) is missing"),
        ("clip.pt", r"the CLIP file \(a .pt such as ViT-L-14.pt\) is missing"),
    ],
)
def test_a_missing_file_is_named(tiny_llama_adapter, tmp_path, drop, message):
    folder = _copy(tiny_llama_adapter, tmp_path, drop=drop)
    with pytest.raises(ModelError, match=message):
        inspect_gm(f"llama-adapter:{folder}")


def test_a_checkpoint_for_another_llama_size_is_refused(tiny_llama_adapter, tmp_path):
    folder = _copy(tiny_llama_adapter, tmp_path)
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").unlink()
    (folder / "params.json").write_text(json.dumps({**params, "dim": 128, "n_layers": 8}))
    with pytest.raises(
        ModelError,
        match=r"consolidated.00.pth: a LLaMA of dim 64 with 4 layers, but params.json gives dim 128 with 8 layers",
    ):
        inspect_gm(str(folder))


def _with_adapter(tiny: Path, tmp_path: Path, edit) -> Path:
    folder = _copy(tiny, tmp_path)
    ckpt = torch.load(tiny / "llama_adapter.pth")
    edit(ckpt["model"])
    _replace(folder / "llama_adapter.pth", ckpt)
    return folder


def test_an_adapter_for_more_layers_than_params_json_is_refused(tiny_llama_adapter, tmp_path):
    def five_layers(model):  # query length 4: 20 rows are queries for 5 layers
        model["adapter_query.weight"] = torch.zeros(20, 64)

    folder = _with_adapter(tiny_llama_adapter, tmp_path, five_layers)
    with pytest.raises(
        ModelError,
        match=r"llama_adapter.pth: adapter queries for 5 layers \(query length 4\), but params.json gives 4 layers",
    ):
        inspect_gm(str(folder))


def test_an_adapter_whose_query_length_does_not_match_is_refused(tiny_llama_adapter, tmp_path):
    def other_length(model):
        model["visual_query.weight"] = torch.zeros(5, 64)

    folder = _with_adapter(tiny_llama_adapter, tmp_path, other_length)
    with pytest.raises(
        ModelError,
        match=r"llama_adapter.pth: adapter_query has 12 rows, not a multiple of the query length 5",
    ):
        inspect_gm(str(folder))


def test_an_adapter_for_another_width_is_refused(tiny_llama_adapter, tmp_path):
    def wider(model):
        model["adapter_query.weight"] = torch.zeros(12, 128)

    folder = _with_adapter(tiny_llama_adapter, tmp_path, wider)
    with pytest.raises(ModelError, match="adapter queries of width 128, but params.json gives LLaMA dim 64"):
        inspect_gm(str(folder))


def test_an_adapter_tensor_of_the_wrong_shape_is_named_at_load(tiny_llama_adapter, tmp_path):
    def bad_bias(model):
        model["llama.layers.2.feed_forward.w1.bias"] = torch.zeros(7)

    folder = _with_adapter(tiny_llama_adapter, tmp_path, bad_bias)
    with pytest.raises(
        ModelError, match=r"llama_adapter.pth: tensor 'llama.layers.2.feed_forward.w1.bias' has shape \[7\]"
    ):
        load_gm(str(folder))


def test_a_lora_adapter_is_refused(tiny_llama_adapter, tmp_path):
    def lora(model):
        model["llama.layers.0.attention.lora_wq_l1.weight"] = torch.zeros(16, 64)

    folder = _with_adapter(tiny_llama_adapter, tmp_path, lora)
    with pytest.raises(ModelError, match="a LoRA LLaMA-Adapter checkpoint .* is not supported"):
        inspect_gm(str(folder))


def test_two_adapter_checkpoints_are_ambiguous(tiny_llama_adapter, tmp_path):
    folder = _copy(tiny_llama_adapter, tmp_path)
    shutil.copy(tiny_llama_adapter / "llama_adapter.pth", folder / "BIAS-7B.pth")
    with pytest.raises(
        ModelError, match="more than one LLaMA-Adapter checkpoint: BIAS-7B.pth, llama_adapter.pth"
    ):
        inspect_gm(str(folder))


def test_flash_attention_and_a_channel_order_for_hf_are_refused(tiny_llama_adapter, tiny_gm):
    with pytest.raises(ConfigError, match="'flash_attention_2' is not available for LLaMA-Adapter models"):
        inspect_gm(str(tiny_llama_adapter), attn_implementation="flash_attention_2")
    with pytest.raises(ConfigError, match="channel order must be one of bgr, rgb, got 'bgr '"):
        inspect_gm(str(tiny_llama_adapter), channel_order="bgr ")
    with pytest.raises(ConfigError, match="the channel order applies to LLaMA-Adapter models only"):
        inspect_gm(str(tiny_gm), channel_order="rgb")


# --- the harvest and the key ------------------------------------------------------------------------


def test_harvest_writes_the_backend_into_the_key_and_rows_equal_capture(
    index_path, tiny_llama_adapter, gm, tmp_path
):
    from netroller.data.cameras import load_camera_images
    from netroller.data.index import read_index
    from netroller.stages.harvest import HarvestConfig, harvest
    from netroller.storage.reader import CacheReader

    cfg = HarvestConfig(
        index=index_path,
        out=tmp_path / "cache",
        model=f"llama-adapter:{tiny_llama_adapter}",
        tokens=3,
        splits=("val",),
        shard_size=4,
        workers=0,
        progress=False,
        dtype="float32",
    )
    reader = CacheReader(harvest(cfg))
    info = inspect_gm(str(tiny_llama_adapter))
    assert reader.key.backend == "llama-adapter" and reader.key.model_stand_in
    assert (reader.key.model_hash, reader.key.processor_hash) == (info.model_hash, info.processor_hash)
    index = read_index(index_path)
    records = [r for r in index.records if r.split == "val"][:2]
    batch = reader.read([r.sample_token for r in records])
    capturer = _capturer(gm, tokens=3)
    for i, rec in enumerate(records):
        cap = capturer.capture(load_camera_images(rec, index.dataroot()), PromptSource.template().default)
        np.testing.assert_allclose(batch.hidden[i], cap.hidden, rtol=1e-5, atol=1e-5)  # batched there
        assert batch.length[i] == cap.length


def test_keys_without_a_backend_read_as_hf():
    key = LatentKey.from_dict(
        dict(
            model="m",
            model_hash="h",
            processor_hash="p",
            prompt_hash="q",
            tokens=1,
            hidden_size=8,
            dtype="float16",
            layers=[0],
        )
    )
    assert key.backend == "hf"
    other = LatentKey(**{**key.to_dict(), "backend": "llama-adapter"})
    assert key.mismatch(other) == ("backend", "hf", "llama-adapter")
    written_before = {k: v for k, v in key.to_dict().items() if k != "backend"}  # a cache.json without it
    cache = CacheKey.from_dict(
        {
            **written_before,
            "num_model_layers": 1,
            "dataset_version": "v1.0-mini",
            "splits": ["val"],
            "index_hash": "i",
            "code_version": "0",
        }
    )
    assert cache.backend == "hf" and cache.latent_key() == key
