"""Every benchmark runs, at tiny sizes, through the same code as `make bench`, and returns its figures:
a renamed or broken figure fails here, not only in `make bench` (which nothing else runs)."""

from __future__ import annotations

import math

import pytest

from netroller.bench import rounds
from netroller.bench.run import main, run_topic

RATIOS = {
    "reader": (
        "read_vs_memmap_ratio",
        "read_vs_memmap_ratio_unverified",
        "read_vs_pickle_ratio",
        "read_vs_zarr_python_ratio",
    ),
    "harvest": (
        "harvest_overhead_ratio",
        "harvest_scaling_2w",
        "batch_4_speedup",
        "batch_16_speedup",
        "generated_over_teacher_forced_T192",
    ),
    "netroller": (
        "train_cache_overhead_ratio",
        "train_cache_overhead_epoch_ratio",
        "cache_vs_online_epoch_speedup",
    ),
    "gm": (),
    "vad": (),
}
FIGURES = {
    "reader": (
        "cache_reader_gbps",
        "cache_reader_unverified_gbps",
        "memmap_gbps",
        "zarr_python_gbps",
        "gzip_pickle_gbps",
        "cache_reader_batch_ms_median",
        "memmap_batch_ms_median",
        "shard_map_ms_mean",
        "cache_write_gbps",
        "bytes_per_sample",
        "rounds",
    ),
    "gm": (
        "build_s",
        "params",
        "preprocess_s",
        "capture_s_T1",
        "capture_s_T8",
        "capture_s_T32",
        "capture_eos_s_T8",
        "capture_eos_s_T32",
        "prefill_s",
        "per_token_s",
        "peak_rss_mb",
    ),
    "harvest": (
        "bare_samples_per_s",
        "harvest_1w_samples_per_s",
        "harvest_2w_samples_per_s",
        "ray_start_s",
        "model_load_s",
        "peak_rss_mb_per_worker",
        "peak_rss_mb_driver",
        "bytes_per_sample",
        "bytes_on_disk_per_sample",
        "seconds_per_sample_T1",
        "seconds_per_sample_T8",
        "seconds_per_sample_T32",
        "mean_length_T32",
        "batch_1_samples_per_s",
        "batch_4_samples_per_s",
        "batch_16_samples_per_s",
        "teacher_forced_T192_s_per_sample",
        "generated_T192_s_per_sample",
        "bytes_per_sample_T192",
        "rounds",
    ),
    "vad": (
        "vad_tiny_params",
        "vad_base_params",
        "debug_train_samples_per_s_cpu",
        "vad_tiny_train_samples_per_s_cpu",
        "vad_tiny_forward_s_cpu",
        "vad_base_forward_s_cpu",
    ),
    "netroller": (
        "epoch_seconds_cache",
        "epoch_seconds_ram",
        "epoch_seconds_online",
        "latent_fetch_ms_per_batch_cache",
        "latent_fetch_ms_per_batch_ram",
        "latent_fetch_ms_per_batch_online",
        "harvest_seconds_once",
        "gm_seconds_per_sample_online",
        "rounds",
    ),
}


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, int | float):
        yield value


@pytest.mark.parametrize("topic", sorted(RATIOS))
def test_benchmark_smoke_returns_its_figures_finite(topic, request):
    if topic == "harvest":
        request.getfixturevalue("ray_local")  # the session's Ray, not a second one
    figures = run_topic(topic, smoke=True)
    ratios = [f"{r}{end}" for r in RATIOS[topic] for end in ("", "_min", "_max")]
    expected = [*ratios, *FIGURES[topic], "loadavg_start", "loadavg_end", "bench_seconds"]
    missing = [k for k in expected if k not in figures]
    assert not missing, f"bench {topic} lost figures {missing}"
    bad = {k: v for k, v in figures.items() if not all(math.isfinite(x) for x in _numbers(v)) or v is None}
    assert not bad, f"bench {topic} returned non-finite figures {bad}"
    for r in RATIOS[topic]:
        assert figures[f"{r}_min"] <= figures[r] <= figures[f"{r}_max"]


def test_unknown_benchmark_is_refused_naming_it(capsys):
    assert main(["--smoke", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_round_orders_put_every_run_first_and_after_every_other_alike():
    orders = [rounds.order("abc", k) for k in range(6)]
    assert sorted(o[0] for o in orders) == ["a", "a", "b", "b", "c", "c"]
    after = [(o[i], o[i + 1]) for o in orders for i in range(2)]
    assert all(after.count(pair) == 2 for pair in after)
    assert len(set(after)) == 6


def test_spread_is_median_min_max_of_the_rounds():
    assert rounds.spread("r", [1.0, 3.0, 2.0]) == {"r": 2.0, "r_min": 1.0, "r_max": 3.0}
    with pytest.raises(ValueError, match="r: per-round values must be finite"):
        rounds.spread("r", [1.0, float("nan")])
