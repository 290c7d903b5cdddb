"""`python -m bench.table` (`make bench`, `make bench-serve`): the table builder on handmade figures, a bad
`--compare-ref` as one line before anything runs, and a tiny real run of every row against HEAD."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.table import GOALS, Tree, has, main, markdown_table

REPO_ROOT = Path(__file__).resolve().parents[2]
IN_GIT = (REPO_ROOT / ".git").exists()


def figures(batch1: float, batch64: float, tps16: float, tps64: float, ready_s: float) -> dict:
    def level(tps: float, rss: int) -> dict:
        return {"tokens_per_s": tps, "ttft_p95_s": 0.25, "errors": 0, "rss_bytes": rss, "peak_rss_bytes": rss}

    return {
        "engine": {"batch1_tokens_per_s": batch1, "batchN_tokens_per_s": batch64, "threads": 2},
        "service": {"levels": {"16": level(tps16, 500 << 20), "64": level(tps64, 700 << 20)}},
        "cold-start": {"ready_s": ready_s},
    }


def result(earlier: dict | None, skipped: dict | None = None) -> dict:
    commits = {"this tree": {"sha": "aaaa", "figures": figures(300, 5000, 1500, 2500, 2.0), "skipped": {}}}
    if earlier is not None:
        commits["HEAD~1"] = {"sha": "bbbb", "figures": earlier, "skipped": skipped or {}}
    return {
        "model": {"n_layer": 6, "n_embd": 384, "n_head": 3, "vocab_size": 2048},
        "settings": {
            "rows": ["engine", "service", "cold-start"],
            "rounds": 2,
            "batch": 64,
            "dtype": "float32",
            "streams": [16, 64],
            "max_tokens": 64,
        },
        "commits": commits,
        "goals": GOALS,
        "load_average_1m": 1.0,
        "cpus": 2,
    }


def test_the_table_has_the_issues_rows_both_commits_their_ratio_and_the_goals() -> None:
    table = markdown_table(result(figures(150, 2500, 750, 1250, 8.0)))
    lines = table.splitlines()
    assert lines[0] == "|  | this tree (aaaa) | HEAD~1 (bbbb) | this / earlier | goal |"
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1:] for line in lines[2:7]}
    assert rows["engine decode, batch 1 (tok/s, float32)"] == ["300", "150", "2.00x", "≥ 300 |"]
    assert rows["engine decode, batch 64, 2 threads (tok/s, all rows)"] == [
        "5,000",
        "2,500",
        "2.00x",
        "≥ 5,000 |",
    ]
    sixteen = rows["service, 16 streams, 64-token replies (tok/s)"]
    assert sixteen == ["1,500, TTFT p95 0.25 s", "750, TTFT p95 0.25 s", "2.00x", "≥ 1,500 |"]
    sixty_four = rows["service, 64 streams, 64-token replies (tok/s)"]
    assert sixty_four[0] == "2,500, TTFT p95 0.25 s, peak RSS 700 MiB"
    assert sixty_four[3] == "≥ 2,500, TTFT p95 ≤ 1 s |"
    # a start that takes a quarter of the time reads as 4x, like a rate that is 4 times higher
    assert rows["cold start to `/ready`, this model"] == ["2 s", "8 s", "4.00x", "≤ 3 s |"]


def test_a_part_the_earlier_commit_cannot_run_is_empty_with_its_reason(tmp_path: Path) -> None:
    reason = has(Tree("HEAD~1", "bbbb", tmp_path), "nanochat/bench.py")
    assert reason == "HEAD~1 has no nanochat/bench.py"
    earlier = figures(150, 2500, 750, 1250, 8.0)
    del earlier["engine"]
    table = markdown_table(result(earlier, {"engine": reason}))
    assert "| engine decode, batch 1 (tok/s, float32) | 300 | – | – | ≥ 300 |" in table
    assert table.splitlines()[-1] == "HEAD~1: engine not measured: HEAD~1 has no nanochat/bench.py"


def test_without_an_earlier_commit_there_is_no_ratio_column() -> None:
    table = markdown_table(result(None))
    assert table.splitlines()[0] == "|  | this tree (aaaa) | goal |"


@pytest.mark.skipif(not IN_GIT, reason="needs the repository's git history")
@pytest.mark.parametrize("ref", ["no-such-ref-16", "HEAD~100000"])
def test_a_bad_compare_ref_is_one_line_before_anything_runs(ref: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["--compare-ref", ref, "--rows", "all"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench_table: --compare-ref {ref}: not a commit of this repository"), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["--rows", "engine,warp-drive"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_table: ") and err.count("\n") == 1


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(not IN_GIT, reason="needs the repository's git history")
def test_a_tiny_run_of_every_row_against_head(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "bench.table", "--rows", "all", "--compare-ref", "HEAD", "--depth", "1",
        "--rounds", "1", "--batch", "2", "--prompt-len", "8", "--decode-steps", "4", "--streams", "1,2",
        "--max-tokens", "4", "--requests-per-level", "2", "--json",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOCHAT_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)

    assert run["model"]["n_layer"] == 1 and run["model"]["vocab_size"] == 2048
    assert list(run["commits"]) == ["this tree", "HEAD"]
    for commit in run["commits"].values():
        assert commit["skipped"] == {}
        f = commit["figures"]
        assert f["engine"]["batch1_tokens_per_s"] > 0 and f["engine"]["batchN_tokens_per_s"] > 0
        for level in f["service"]["levels"].values():
            assert level["errors"] == 0 and level["tokens_per_s"] > 0 and level["ttft_p95_s"] > 0
            assert level["peak_rss_bytes"] >= level["rss_bytes"] > 0
        assert f["cold-start"]["ready_s"] > 0
    table = run["table"].splitlines()
    assert table[0].startswith("|  | this tree (") and "| HEAD (" in table[0]
    assert len([line for line in table if line.startswith("| ") and "x |" in line]) == 5  # a ratio each
