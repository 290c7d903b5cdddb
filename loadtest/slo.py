"""The service level objectives in `loadtest/slo.yaml`, read in one place: by the release gate
(`loadtest/gate.py`) and by the alert rules and dashboard generators (`alerts/build.py`,
`dashboards/build.py`). Every objective must be there, as a positive number."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

SLO_FILE = Path(__file__).resolve().with_name("slo.yaml")
SLO_KEYS = (
    "latency_p95_s",
    "ttft_p95_s",
    "tpot_p95_s",
    "error_rate_max",
    "rejection_rate_max",
    "min_output_tokens_per_s",
    "queue_saturation_max",
    "memory_max_ratio",
)


class SloError(ValueError):
    """The SLO file is missing, malformed, or lacks an objective; the message says which."""


def load_slos(path: str | os.PathLike[str] = SLO_FILE) -> dict[str, float]:
    """Every objective of the file, by name."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise SloError(f"cannot read the SLO file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SloError(f"the SLO file {path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise SloError(f"{path}: expected a mapping of SLO names to numbers")
    missing = [key for key in SLO_KEYS if key not in data]
    if missing:
        raise SloError(f"{path}: missing {', '.join(missing)}")
    for key in SLO_KEYS:
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise SloError(f"{path}: {key} must be a positive number, got {value!r}")
    return {key: float(data[key]) for key in SLO_KEYS}
