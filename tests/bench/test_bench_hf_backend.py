"""`python -m bench.hf_backend`: a tiny run gives every figure and ratio, the earlier engine included (here
the one at HEAD, loaded from git as its own module), all positive; a ref git does not know is one line."""

from __future__ import annotations

import json

import pytest

from bench.hf_backend import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_tiny_run_reports_both_backends_and_the_ref_side_by_side(capsys) -> None:
    assert main(["--compare-ref", "HEAD", "--streams", "1", "2", "--steps", "2", "--rounds", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    figures = result["decode_tokens_per_s"]
    assert set(figures) == {"nanochat", "hf", "hf@HEAD"}
    assert all(figures[name][s] > 0 for name in figures for s in ("1", "2"))
    assert set(result["ratios"]) == {f"hf_vs_{b}_{s}" for b in ("nanochat", "hf@HEAD") for s in ("1", "2")}


def test_an_unknown_ref_is_one_clear_line() -> None:
    with pytest.raises(SystemExit, match="--compare-ref no-such-ref"):
        main(["--compare-ref", "no-such-ref", "--steps", "1", "--rounds", "1"])
