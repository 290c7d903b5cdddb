"""Run configs: a dataclass per command, filled from defaults, then a TOML file, then command-line flags.

`add_config_arguments` turns a config dataclass into `--flag`s (default None, so only flags the user
typed override the file); `build_config` merges and validates. Unknown keys in the file and wrong types
are errors that name the key and the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or value that cannot be used."""


def require_at_least(config: Any, minimum: int, names: tuple[str, ...]) -> None:
    """ConfigError naming the first of `names` whose value on `config` is below `minimum`."""
    for name in names:
        if getattr(config, name) < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {getattr(config, name)}")


def _base_type(annotation: Any) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, help_texts: dict[str, str]) -> None:
    """One `--field-name` option per dataclass field (booleans take true/false)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = _base_type(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else None
        text = help_texts.get(field.name, "")
        text = f"{text} (default: {default})" if default not in (None, "") else text
        parser.add_argument(
            flag,
            dest=field.name,
            type=_parse_bool if kind is bool else kind,
            default=None,
            metavar=field.name.upper() if kind is not bool else "BOOL",
            help=text,
        )


def build_config(cls: type[T], args: argparse.Namespace, file: str | Path | None, section: str) -> T:
    """Defaults ← [section] of the TOML file ← flags given on the command line."""
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    if file:
        path = Path(file)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))  # TOML is UTF-8 whatever the locale
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from e
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        unknown = sorted(set(table) - names)
        if unknown:
            raise ConfigError(f"{path}: unknown keys in [{section}]: {', '.join(unknown)}")
        for key, value in table.items():
            kind = _base_type(hints[key])
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"{path}: [{section}] {key} must be {kind.__name__}, got {value!r}")
            values[key] = value
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    missing = [
        f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in values
    ]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise ConfigError(f"missing required settings: {flags} (or set them in the config file)")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e
