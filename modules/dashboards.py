"""Read the Grafana dashboards (`dashboards/*.json`) that `modules.grafana` provisions.

Pure Python (no cdktf). The files are passed on byte for byte; this only checks that each is a dashboard.
"""

from __future__ import annotations

import json
from pathlib import Path


class DashboardError(ValueError):
    """The dashboard folder is empty, or a file is not a Grafana dashboard."""


def read_dashboards(folder: str | Path) -> dict[str, str]:
    """`name.json` -> its text, for every dashboard in `folder`; each must be a JSON object with panels."""
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        raise DashboardError(f"{folder}: no Grafana dashboards (*.json)")
    dashboards = {}
    for path in files:
        text = path.read_text()
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DashboardError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict) or not isinstance(parsed.get("panels"), list):
            raise DashboardError(f"{path}: not a Grafana dashboard (no panels list)")
        dashboards[path.name] = text
    return dashboards
