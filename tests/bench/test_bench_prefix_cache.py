"""bench/prefix_cache.py on a tiny model: it runs, its engines agree token for token, and it reports every
figure the docs quote (no timing is asserted)."""

from __future__ import annotations

from bench.prefix_cache import run


def test_the_benchmark_reports_its_figures_on_a_tiny_model() -> None:
    result = run(depth=1, repeats=2, message=8, reply=4, turns=3, conversations=1)
    assert result["identical_tokens"] is True
    conversation = result["conversation"]
    for name in ("without", "with"):
        assert len(conversation[name]["ttft_ms_by_turn"]) == 3
        assert conversation[name]["turn_last_over_turn1"] > 0
        for case in ("shared_system_prompt", "miss"):
            assert result[case][name]["ttft_mean_ms"] > 0 and result[case][name]["ttft_p95_ms"] > 0
    assert (
        result["shared_system_prompt"]["clients"] == 16 and result["miss"]["mean_ratio_with_over_without"] > 0
    )
    assert len(result["miss"]["mean_ratio_by_repeat"]) == 2
    miss = result["miss"]
    assert 0 < miss["cache_work_share"] < 1 and 0 < miss["cache_work_share_first_fill"] < 1
