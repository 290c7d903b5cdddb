"""Run configs: defaults ← TOML table ← flags, type checks and every error naming the key, file or flag;
the config dataclasses' own validation; and the user-facing templates in docs/experiments."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from pathlib import Path

import pytest

from nanochat.train.base import HELP as BASE_HELP
from nanochat.train.base import BaseConfig, grad_accum_steps
from nanochat.train.config import ConfigError, add_config_arguments, build_config
from nanochat.train.sft import HELP as SFT_HELP
from nanochat.train.sft import SFTConfig

REPO_ROOT = Path(__file__).resolve().parents[3]
TEMPLATES = REPO_ROOT / "docs" / "experiments"
REQUIRED_BASE = ["--data", "d", "--tokenizer", "t", "--out", "o"]
REQUIRED_SFT = ["--checkpoint", "c", "--train", "conversations.jsonl", "--out", "o"]


def parser_for(cls: type, help_texts: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test")
    add_config_arguments(parser, cls, help_texts)
    return parser


def base_config(argv: list[str], file: Path | None = None) -> BaseConfig:
    return build_config(BaseConfig, parser_for(BaseConfig, BASE_HELP).parse_args(argv), file, "base")


def sft_config(argv: list[str], file: Path | None = None) -> SFTConfig:
    return build_config(SFTConfig, parser_for(SFTConfig, SFT_HELP).parse_args(argv), file, "sft")


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_flags_only_give_the_dataclass_defaults():
    config = base_config(REQUIRED_BASE)
    assert config == BaseConfig(data="d", tokenizer="t", out="o")
    assert (config.depth, config.matrix_lr, config.compile, config.run_name) == (4, 0.02, False, "base")


def test_file_overrides_defaults_and_flags_override_the_file(tmp_path):
    file = write_toml(
        tmp_path,
        """
        [base]
        data = "from-file"
        depth = 6
        matrix_lr = 0.05
        compile = true
        run_name = "sweep café 🦀"

        [sft]
        num_epochs = 99  # another command's table is not read
        """,
    )
    config = base_config(
        ["--tokenizer", "t", "--out", "o", "--depth", "8", "--compile", "false", "--seed", "7"], file
    )
    assert config.data == "from-file"  # file only
    assert config.depth == 8  # flag beats file
    assert config.matrix_lr == 0.05  # file beats default
    assert config.compile is False  # a "false" flag beats a true in the file
    assert config.seed == 7  # flag beats default
    assert config.run_name == "sweep café 🦀"  # TOML is read as UTF-8
    assert config.embedding_lr == BaseConfig.embedding_lr  # untouched default


def test_a_file_without_the_section_gives_defaults(tmp_path):
    file = write_toml(tmp_path, "[sft]\nnum_epochs = 3\n")
    assert base_config(REQUIRED_BASE, file) == BaseConfig(data="d", tokenizer="t", out="o")


@pytest.mark.parametrize(
    "text, value",
    [
        *[("true", True), ("TRUE", True), ("yes", True), ("1", True), ("on", True)],
        *[("false", False), ("False", False), ("no", False), ("0", False), ("off", False)],
    ],
)
def test_boolean_flags_take_words(text, value):
    assert base_config([*REQUIRED_BASE, "--resume", text]).resume is value


def test_bad_boolean_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser_for(BaseConfig, BASE_HELP).parse_args([*REQUIRED_BASE, "--compile", "maybe"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--compile" in err and "expected true or false, got 'maybe'" in err


def test_flags_are_parsed_to_the_field_types():
    config = base_config([*REQUIRED_BASE, "--matrix-lr", "1", "--depth", "12", "--wandb-project", "p"])
    assert isinstance(config.matrix_lr, float) and config.matrix_lr == 1.0
    assert config.depth == 12 and config.wandb_project == "p"


def test_toml_integers_become_floats_for_float_fields(tmp_path):
    file = write_toml(tmp_path, "[base]\nmatrix_lr = 1\nwarmdown_ratio = 0\n")
    config = base_config(REQUIRED_BASE, file)
    assert type(config.matrix_lr) is float and config.matrix_lr == 1.0
    assert type(config.warmdown_ratio) is float and config.warmdown_ratio == 0.0


def test_unknown_keys_are_named_with_the_file(tmp_path):
    file = write_toml(tmp_path, "[base]\ndepth = 4\nnum-iterations = 5\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError) as error:
        base_config(REQUIRED_BASE, file)
    assert str(error.value) == f"{file}: unknown keys in [base]: learning_rate, num-iterations"


@pytest.mark.parametrize(
    "line, message",
    [
        ('depth = "4"', "depth must be int, got '4'"),
        ("depth = 4.0", "depth must be int, got 4.0"),
        ("depth = true", "depth must be int, got True"),
        ("matrix_lr = true", "matrix_lr must be float, got True"),
        ('matrix_lr = "0.1"', "matrix_lr must be float, got '0.1'"),
        ("compile = 1", "compile must be bool, got 1"),
        ('compile = "true"', "compile must be bool, got 'true'"),
        ("data = 3", "data must be str, got 3"),
        ("device = [1]", "device must be str, got [1]"),
    ],
)
def test_wrong_types_in_the_file_name_key_and_file(tmp_path, line, message):
    file = write_toml(tmp_path, f"[base]\n{line}\n")
    with pytest.raises(ConfigError) as error:
        base_config(REQUIRED_BASE, file)
    assert str(error.value) == f"{file}: [base] {message}"


def test_section_that_is_not_a_table(tmp_path):
    file = write_toml(tmp_path, "base = 3\n")
    with pytest.raises(ConfigError, match=r"run\.toml: \[base\] must be a table"):
        base_config(REQUIRED_BASE, file)


def test_invalid_toml_names_the_file(tmp_path):
    file = write_toml(tmp_path, "[base]\ndepth = = 4\n")
    with pytest.raises(ConfigError) as error:
        base_config(REQUIRED_BASE, file)
    assert str(error.value).startswith(f"{file}: not valid TOML: ")


def test_file_that_is_not_utf8_is_a_config_error(tmp_path):
    # e.g. saved by an editor in Latin-1: a one-line config error, not a UnicodeDecodeError traceback.
    file = tmp_path / "latin1.toml"
    file.write_bytes("# caf\u00e9\n[base]\ndepth = 4\n".encode("latin-1"))
    with pytest.raises(ConfigError) as error:
        base_config(REQUIRED_BASE, file)
    assert str(error.value).startswith(f"{file}: not valid TOML: ")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.toml"):
        base_config(REQUIRED_BASE, tmp_path / "nope.toml")


def test_missing_required_settings_are_named_as_flags(tmp_path):
    with pytest.raises(ConfigError) as error:
        base_config([])
    assert str(error.value) == (
        "missing required settings: --data, --tokenizer, --out (or set them in the config file)"
    )
    file = write_toml(tmp_path, '[base]\ndata = "d"\ntokenizer = "t"\n')
    with pytest.raises(ConfigError, match=r"missing required settings: --out \("):
        base_config([], file)
    assert base_config(["--out", "o"], file).out == "o"


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--depth", "0", "depth must be >= 1, got 0"),
        ("--max-seq-len", "0", "max_seq_len must be >= 1, got 0"),
        ("--device-batch-size", "-2", "device_batch_size must be >= 1, got -2"),
        ("--num-iterations", "0", "num_iterations must be >= 1, got 0"),
        ("--eval-batches", "0", "eval_batches must be >= 1, got 0"),
        ("--total-batch-size", "-1", "total_batch_size must be >= 0, got -1"),
        ("--eval-every", "-1", "eval_every must be >= 0, got -1"),
        ("--save-every", "-5", "save_every must be >= 0, got -5"),
    ],
)
def test_base_config_validation(flag, value, message):
    with pytest.raises(ConfigError) as error:
        base_config([*REQUIRED_BASE, flag, value])
    assert str(error.value) == message


def test_base_config_accepts_the_boundaries():
    config = base_config(
        [*REQUIRED_BASE, "--depth", "1", "--total-batch-size", "0", "--eval-every", "0", "--save-every", "0"]
    )
    assert (config.depth, config.total_batch_size, config.eval_every, config.save_every) == (1, 0, 0, 0)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--device-batch-size", "0", "device_batch_size must be >= 1, got 0"),
        ("--num-epochs", "0", "num_epochs must be >= 1, got 0"),
        ("--num-iterations", "-1", "num_iterations must be >= 0, got -1"),
        ("--max-seq-len", "-1", "max_seq_len must be >= 0, got -1"),
        ("--eval-every", "-1", "eval_every must be >= 0, got -1"),
        ("--init-lr-frac", "0", "init_lr_frac must be in (0, 1], got 0.0"),
        ("--init-lr-frac", "1.5", "init_lr_frac must be in (0, 1], got 1.5"),
        ("--init-lr-frac", "-0.1", "init_lr_frac must be in (0, 1], got -0.1"),
    ],
)
def test_sft_config_validation(flag, value, message):
    with pytest.raises(ConfigError) as error:
        sft_config([*REQUIRED_SFT, flag, value])
    assert str(error.value) == message


def test_sft_config_from_file_and_flags(tmp_path):
    file = write_toml(tmp_path, '[sft]\ninit_lr_frac = 1\nval = "val.jsonl"\nstep = 300\n')
    config = sft_config([*REQUIRED_SFT, "--step", "-1"], file)
    assert config.init_lr_frac == 1.0 and type(config.init_lr_frac) is float
    assert (config.val, config.step, config.num_epochs) == ("val.jsonl", -1, 1)


def test_validation_errors_from_the_file_are_config_errors(tmp_path):
    file = write_toml(tmp_path, "[sft]\ninit_lr_frac = 2\n")
    with pytest.raises(ConfigError, match=r"init_lr_frac must be in \(0, 1\], got 2.0"):
        sft_config(REQUIRED_SFT, file)


def test_every_field_is_a_flag_with_its_default_in_the_help():
    for cls, help_texts in ((BaseConfig, BASE_HELP), (SFTConfig, SFT_HELP)):
        text = parser_for(cls, help_texts).format_help()
        for field in dataclasses.fields(cls):
            assert "--" + field.name.replace("_", "-") in text
    base_help = " ".join(parser_for(BaseConfig, BASE_HELP).format_help().split())
    assert "transformer layers; width = 64 x depth (default: 4)" in base_help
    assert "--compile BOOL" in base_help
    assert "--data DATA folder of parquet shards with a text column" in base_help
    assert "(default: )" not in base_help  # empty-string defaults are not shown


@pytest.mark.parametrize("name", ["baseline.toml", "demo.toml"])
def test_experiment_templates_are_valid_configs(name):
    path = TEMPLATES / name
    tables = tomllib.loads(path.read_text())
    assert set(tables) == {"base", "sft"}
    base = base_config(REQUIRED_BASE, path)
    sft = sft_config(REQUIRED_SFT, path)
    for config, section in ((base, "base"), (sft, "sft")):
        for key, value in tables[section].items():
            assert getattr(config, key) == value, (section, key)
    assert (base.data, base.out, sft.checkpoint) == ("d", "o", "c")


def test_experiment_templates_batch_sizes_fit_their_hardware():
    # baseline: one 8-GPU node; demo: one CPU process. Both without gradient accumulation.
    baseline = base_config(REQUIRED_BASE, TEMPLATES / "baseline.toml")
    demo = base_config(REQUIRED_BASE, TEMPLATES / "demo.toml")
    assert grad_accum_steps(baseline, 8) == 1
    assert grad_accum_steps(demo, 1) == 1
    with pytest.raises(ConfigError, match="must be a multiple of"):
        grad_accum_steps(baseline, 3)
