"""Tests for nanochat/cli.py: the real command on real checkpoints (the reference one written by the public
nanochat code, and tiny ones written here), in-process through `main` and as `python -m nanochat`."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint import model_path
from nanochat.cli import EXIT_ERROR, EXIT_USAGE, main
from nanochat.gpt import GPT
from nanochat.tokenizer import Tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = REPO_ROOT / "models" / "demo"
REFERENCE_PROMPT = "The GNU General Public License"
TINY_PROMPT = "the quick brown fox"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr). Options without spaces may come as one string."""
    args = [part for arg in argv for part in (arg.split() if arg.startswith("--") and " " in arg else [arg])]
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def run_module(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanochat", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def tiny_model(make_model) -> GPT:
    return make_model(n_layer=1, n_embd=32, n_head=2, n_kv_head=1, sequence_len=128)


@pytest.fixture
def tiny(tmp_path: Path, tiny_model: GPT, write_checkpoint) -> str:
    return str(write_checkpoint(tmp_path / "tiny", tiny_model, step=7))


@pytest.fixture(scope="module")
def reference_sample(reference_dir: Path) -> list[str]:
    """`sample` on the reference checkpoint with the prompt of expected.json."""
    return ["sample", "--checkpoint", str(reference_dir / "modelA"), "--prompt", REFERENCE_PROMPT]


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# --- sample -----------------------------------------------------------------------------------------------


def test_sample_reference_greedy_ids(reference_sample: list[str], expected: dict, capsys) -> None:
    code, out, err = run(capsys, *reference_sample, "--max-tokens 24 --temperature 0 --ids")
    assert code == 0, err
    result = json.loads(out)
    generation = expected["generation"]
    assert generation["prompt_text"] == REFERENCE_PROMPT
    assert result["prompt_ids"] == generation["prompt_ids"]
    assert result["tokens"] == generation["engine_greedy"]["tokens"]
    assert result["text"] == generation["engine_greedy"]["text"]


def test_sample_reference_seeded(reference_sample: list[str], expected: dict, capsys) -> None:
    code, out, err = run(
        capsys, *reference_sample, "--max-tokens 24 --temperature 1 --top-k 50 --seed 42 --ids"
    )
    assert code == 0, err
    assert json.loads(out)["tokens"] == expected["generation"]["engine_sample_t1_k50_seed42"]["tokens"]


def test_sample_reference_plain_text(reference_sample: list[str], expected: dict, capsys) -> None:
    code, out, err = run(capsys, *reference_sample, "--max-tokens 24 --temperature 0")
    assert code == 0, err
    assert err == ""
    assert out == REFERENCE_PROMPT + expected["generation"]["engine_greedy"]["text"] + "\n"


def test_sample_tiny_matches_the_reference_sampler(
    tiny: str, tiny_model: GPT, small_tokenizer: Tokenizer, capsys
) -> None:
    code, out, err = run(
        capsys, "sample", "--checkpoint", tiny, "--prompt", TINY_PROMPT, "--max-tokens 6 --ids"
    )
    assert code == 0, err
    result = json.loads(out)
    prompt_ids = small_tokenizer.encode(TINY_PROMPT, prepend=small_tokenizer.get_bos_token_id())
    assert result["prompt_ids"] == prompt_ids
    # the engine (KV cache) must pick what the cache-free GPT.generate picks, until it stops
    reference = list(tiny_model.generate(prompt_ids, max_tokens=6, temperature=0.0))
    tokens = result["tokens"]
    assert 1 <= len(tokens) <= 6
    assert tokens == reference[: len(tokens)]
    stops = {small_tokenizer.get_bos_token_id(), small_tokenizer.encode_special("<|assistant_end|>")}
    assert len(tokens) == 6 or tokens[-1] in stops
    assert result["text"] == small_tokenizer.decode(tokens)


def test_sample_seed_is_reproducible_and_step_selects(
    tmp_path: Path, make_model, write_checkpoint, capsys
) -> None:
    directory = tmp_path / "steps"
    write_checkpoint(directory, make_model(seed=1), step=5)
    write_checkpoint(directory, make_model(seed=2), step=9)
    base = ["sample", "--checkpoint", str(directory), "--prompt", TINY_PROMPT, "--max-tokens 12 --ids"]

    sampled = [run(capsys, *base, "--temperature 1.0 --seed 3 --top-p 0.9") for _ in range(2)]
    assert sampled[0][0] == 0, sampled[0][2]
    assert sampled[0] == sampled[1]

    latest = json.loads(run(capsys, *base)[1])
    step9 = json.loads(run(capsys, *base, "--step 9")[1])
    step5 = json.loads(run(capsys, *base, "--step 5")[1])
    assert latest == step9
    assert step5["tokens"] != step9["tokens"]


def test_sample_bfloat16_and_threads(tiny: str, keep_threads, capsys) -> None:
    options = "--max-tokens 3 --dtype bfloat16 --threads 1 --ids"
    code, out, err = run(capsys, "sample", "--checkpoint", tiny, "--prompt", TINY_PROMPT, options)
    assert code == 0, err
    assert 1 <= len(json.loads(out)["tokens"]) <= 3
    assert torch.get_num_threads() == 1


# --- chat -----------------------------------------------------------------------------------------------


def test_chat_module_entry_point_through_stdin(tiny: str) -> None:
    result = run_module(
        "chat", "--checkpoint", tiny, "--max-tokens", "4", stdin="hello\nclear\nhi there\nquit\n"
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("nanochat tiny step 7.")
    assert result.stdout.count("Assistant:") == 2
    assert result.stdout.count("User:") == 4  # one prompt per line read, "clear" and "quit" included


def test_chat_keeps_history_until_clear(tiny: str, small_tokenizer: Tokenizer, monkeypatch, capsys) -> None:
    """One long turn fits the 128-token context, two do not: only `clear` lets the second run."""
    message = "fox " * 70
    one_turn = small_tokenizer.render_for_completion(
        {"messages": [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]}
    )
    assert 64 < len(one_turn) < 128 - 4

    monkeypatch.setattr("sys.stdin", io.StringIO(f"{message}\nclear\n{message}\n"))
    code, out, err = run(capsys, "chat", "--checkpoint", tiny, "--max-tokens 4")
    assert code == 0, err
    assert out.count("Assistant:") == 2

    # without clear the second turn does not fit: one line says so, and the chat goes on
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{message}\n{message}\n"))
    code, out, err = run(capsys, "chat", "--checkpoint", tiny, "--max-tokens 4")
    assert code == 0
    assert out.count("User:") == 3 and out.count("Assistant:") == 1
    assert_one_line_error(err, "the prompt has", "the context is 128", "type /reset")


def test_chat_with_system_message_ends_on_eof(tiny: str, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n\n"))
    code, out, err = run(
        capsys, "chat", "--checkpoint", tiny, "--system", "You are terse.", "--max-tokens 4 --temperature 0"
    )
    assert code == 0, err
    assert out.count("Assistant:") == 1


def test_chat_system_message_is_part_of_the_prompt(tiny: str, monkeypatch, capsys) -> None:
    """A system message longer than the model's context makes the first turn too long to run."""
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    code, out, err = run(capsys, "chat", "--checkpoint", tiny, "--system", "fox " * 200, "--max-tokens 4")
    assert code == 0
    assert "Assistant:" not in out
    assert_one_line_error(err, "the prompt has", "the context is 128")


# --- bench ----------------------------------------------------------------------------------------------


def a_figure(value: object) -> bool:
    """A measured rate or ratio: a number, rounded, so a very busy machine may make it 0.0, never less."""
    return isinstance(value, float) and value >= 0


def test_bench_random_model_json(capsys) -> None:
    code, out, err = run(
        capsys, "bench", "--depth 1 --batches 2,4 --prompt-len 8 --decode-steps 4 --repeats 1 --json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["model"]["n_layer"] == 1
    assert result["model"]["n_embd"] == 64
    assert a_figure(result["decode_batch1_tokens_per_s"])
    assert set(result["decode_aggregate_tokens_per_s"]) == {"2", "4"}
    assert all(a_figure(v) for v in result["decode_aggregate_tokens_per_s"].values())
    assert {"batch2_vs_batch1", "batch4_vs_batch1"} <= set(result["ratios"])
    if importlib.util.find_spec("transformers") is not None:
        assert a_figure(result["ratios"]["batch1_vs_transformers"])
        assert a_figure(result["transformers"]["decode_batch1_tokens_per_s"])
    else:
        assert result["transformers"] == {"skipped": "transformers not installed"}


def test_bench_checkpoint_text_output(tiny: str, capsys) -> None:
    options = "--batches 2 --prompt-len 8 --decode-steps 2 --repeats 1 --no-transformers"
    code, out, err = run(capsys, "bench", "--checkpoint", tiny, options)
    assert code == 0, err
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert a_figure(float(lines["decode_batch1_tokens_per_s"]))
    assert lines["transformers"] == str({"skipped": "disabled"})
    assert "'n_kv_head': 1" in lines["model"]


# --- errors ---------------------------------------------------------------------------------------------

SAMPLE = ["sample", "--checkpoint", "{tiny}", "--prompt", "hi"]


@pytest.mark.parametrize(
    ("argv", "code", "fragments"),
    [
        ([], EXIT_USAGE, ["required: command"]),
        (["frobnicate"], EXIT_USAGE, ["invalid choice: 'frobnicate'"]),
        (["sample", "--prompt", "hi"], EXIT_USAGE, ["nanochat: error:", "--checkpoint", "sample --help"]),
        (["sample", "--checkpoint", "{tiny}"], EXIT_USAGE, ["--prompt"]),
        ([*SAMPLE, "--max-tokens", "0"], EXIT_USAGE, ["--max-tokens", "positive integer, got 0"]),
        ([*SAMPLE, "--max-tokens", "abc"], EXIT_USAGE, ["--max-tokens", "'abc'"]),
        ([*SAMPLE, "--top-k", "-1"], EXIT_USAGE, ["--top-k", "got -1"]),
        ([*SAMPLE, "--temperature", "warm"], EXIT_USAGE, ["--temperature", "'warm'"]),
        ([*SAMPLE, "--temperature", "-1"], EXIT_ERROR, ["temperature must be between 0 and 100"]),
        ([*SAMPLE, "--top-p", "0"], EXIT_ERROR, ["top_p must be in (0, 1]"]),
        ([*SAMPLE, "--step", "8"], EXIT_ERROR, ["000008"]),
        ([*SAMPLE, "--device", "nonsense"], EXIT_USAGE, ["--device 'nonsense'"]),
        ([*SAMPLE, "--device", "meta"], EXIT_USAGE, ["--device 'meta' is not supported"]),
        ([*SAMPLE, "--device", "xpu"], EXIT_USAGE, ["is not supported", "cpu, cuda[:N] or mps"]),
        (["sample", "--checkpoint", "{missing}", "--prompt", "hi"], EXIT_ERROR, ["not found", "{missing}"]),
        (["chat", "--checkpoint", "{missing}"], EXIT_ERROR, ["not found"]),
        (["bench", "--depth", "1", "--batches", "4,x"], EXIT_USAGE, ["--batches", "'4,x'"]),
        (["bench", "--depth", "1", "--batches", "0"], EXIT_USAGE, ["--batches"]),
        (["bench", "--depth", "1", "--checkpoint", "{tiny}"], EXIT_USAGE, ["not allowed with"]),
        (["bench", "--checkpoint", "{missing}"], EXIT_ERROR, ["not found"]),
    ],
)
def test_bad_input_is_one_line_on_stderr(
    tiny: str, tmp_path: Path, capsys, argv: list[str], code: int, fragments: list[str]
) -> None:
    places = {"tiny": tiny, "missing": str(tmp_path / "no-such-checkpoint")}
    got, out, err = run(capsys, *(arg.format(**places) for arg in argv))
    assert got == code, err
    assert out == ""
    assert_one_line_error(err, *(fragment.format(**places) for fragment in fragments))


def test_corrupt_checkpoint(tiny: str, capsys) -> None:
    path = model_path(Path(tiny), 7)
    path.write_bytes(path.read_bytes()[:1000])
    code, out, err = run(capsys, "sample", "--checkpoint", tiny, "--prompt", "hi")
    assert code == EXIT_ERROR
    assert out == ""
    assert_one_line_error(err, "nanochat: error:", "model_000007.pt", "corrupt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu(tiny: str, capsys) -> None:
    code, _, err = run(capsys, "sample", "--checkpoint", tiny, "--prompt", "hi", "--device", "cuda")
    assert code == EXIT_USAGE
    assert_one_line_error(err, "--device cuda", "no CUDA GPU")


def test_module_entry_point_reports_errors_in_one_line(tmp_path: Path) -> None:
    result = run_module("sample", "--checkpoint", str(tmp_path / "nope"), "--prompt", "hi")
    assert result.returncode == EXIT_ERROR
    assert result.stdout == ""
    assert_one_line_error(result.stderr, "nanochat: error:", "not found")


# --- help -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ([], ["sample", "chat", "bench"]),
        (["sample"], ["--checkpoint", "--prompt", "--max-tokens", "--temperature", "--top-k", "--ids"]),
        (["chat"], ["--checkpoint", "--system", "--max-tokens", "--temperature", "--top-k", "--top-p"]),
        (["bench"], ["--checkpoint", "--depth", "--batches", "--prompt-len", "--decode-steps", "--json"]),
    ],
)
def test_help(capsys, command: list[str], options: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    out, err = capsys.readouterr()
    assert info.value.code == 0
    assert err == ""
    assert out.startswith("usage: nanochat")
    for option in options:
        assert option in out


def test_cli_without_the_training_extras(tmp_path: Path) -> None:
    """The serving image installs no `train` extra (pyarrow, matplotlib): the CLI still starts, sampling
    works, and a command that needs parquet shards says what to install in one line."""
    (tmp_path / "shard_00000.parquet").write_bytes(b"PAR1")
    (tmp_path / "shard_00001.parquet").write_bytes(b"PAR1")
    script = (
        "import sys\n"
        "sys.modules['pyarrow'] = sys.modules['pyarrow.parquet'] = sys.modules['matplotlib'] = None\n"
        "from nanochat.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", script, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    sample = cli("sample", "--checkpoint", str(DEMO), "--prompt", "Hi", "--max-tokens", "3")
    assert sample.returncode == 0, sample.stderr
    train = cli("train", "tokenizer", "--data", str(tmp_path), "--out", str(tmp_path / "t"))
    assert train.returncode == 1
    assert train.stderr.strip().endswith("pip install 'nanochat-service[train]'"), train.stderr
    assert train.stderr.count("\n") == 1


# --- the learning tracks' commands (entry points of `nanochat.commands`) -------------------------------


def cli_without(modules: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    """`nanochat ARGS` in a process where `modules` are not installed (the serving image, a base install)."""
    script = (
        "import sys\n"
        f"for name in {modules!r}:\n"
        "    sys.modules[name] = None\n"
        "import nanochat.cli\n"
        "assert sys.modules.get('tracks') is None, 'the engine CLI imported tracks'\n"
        "sys.exit(nanochat.cli.main(sys.argv[1:]))\n"
    )
    command = [sys.executable, "-c", script, *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def test_the_tracks_commands_are_entry_points_the_engine_does_not_import() -> None:
    from importlib.metadata import entry_points

    from nanochat.cli import COMMANDS_GROUP, build_parser

    found = {e.name: e.value for e in entry_points(group=COMMANDS_GROUP)}
    assert found == {
        "serve": "app.__main__:register",  # the service's command: the engine's CLI never imports app
        "classify": "tracks.classify.commands:register",
        "hf": "tracks.hf_finetune:register",
        "log": "tracks.daily_log:register",
        "learn": "tracks.learn.commands:register",
    }
    help_text = build_parser().format_help()
    for name in found:
        assert name in help_text
    listed = cli_without((), "--help")
    assert listed.returncode == 0 and "classify" in listed.stdout, listed.stderr


def test_without_the_tracks_package_its_commands_say_which_extra_to_install() -> None:
    listed = cli_without(("tracks",), "--help")
    assert listed.returncode == 0, listed.stderr
    assert "classify" in listed.stdout and "needs the 'tracks' extra" in " ".join(listed.stdout.split())
    result = cli_without(("tracks",), "classify", "train", "--dataset", "guardrail")
    assert result.returncode == EXIT_ERROR
    assert_one_line_error(
        result.stderr, "this command needs tracks", "pip install 'nanochat-service[tracks]'"
    )


def test_without_scikit_learn_a_classifier_says_which_extra_to_install() -> None:
    result = cli_without(("sklearn", "skops"), "classify", "predict", "--model", "models/fortunes", "a text")
    assert result.returncode == EXIT_ERROR
    assert_one_line_error(result.stderr, "nanochat: error:", "pip install 'nanochat-service[guardrail]'")


@pytest.mark.slow
def test_bench_compiled_against_eager_json(capsys) -> None:
    options = "--depth 1 --batches 2 --prompt-len 8 --decode-steps 4 --repeats 1 --no-transformers --json"
    code, out, err = run(capsys, "bench", *options.split(), "--compile")
    assert code == 0, err
    compiled = json.loads(out)["compiled"]
    assert compiled["failed"] is None and compiled["buckets"] == [1, 2]
    assert set(compiled["decode_tokens_per_s"]) == {"1", "2"}
    assert all(a_figure(v) for v in compiled["ratios"].values())
    assert set(compiled["ratios"]) == {"batch1_compiled_vs_eager", "batch2_compiled_vs_eager"}
