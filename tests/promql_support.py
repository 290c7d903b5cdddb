"""The PromQL the repository ships, as data for tests: every dashboard query and every alert rule.

`dashboard_queries(path)` lists (panel title, query) with Grafana's variables (`$job`, `$__rate_interval`,
`$__interval`, `$__range`, ...) replaced by concrete values, so Prometheus' HTTP API accepts the query as
is. `alert_rules()` lists the rules of `alerts/*.rules.yaml`, `grafana_rule_queries(path)` the Prometheus
queries of the Grafana-managed alert rules in an alerting provisioning file. `selectors(query)` lists the
series a query reads (parsed with promql-parser) and `documented_metrics()` the metric catalog
(app/observability/catalog.py, which docs/observability.md's table is generated from), so tests can check
that every metric used is one the service exports. Tests import these; nothing here runs a query.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import yaml

from app.observability import catalog

ROOT = Path(__file__).resolve().parents[1]
ALERTS_DIR = ROOT / "alerts"
GRAFANA_ALERTING = ROOT / "observe" / "grafana" / "provisioning" / "alerting" / "nanochat.yaml"
DASHBOARDS_DIR = ROOT / "dashboards"
_MATCH_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")  # $x, ${x}, ${x:format}, [[x]]


class UnknownVariable(ValueError):
    """A query uses a Grafana variable that has no substitute."""


def substitute(query: str, values: dict[str, str]) -> str:
    """`query` with each Grafana variable replaced by `values[name]`; unknown variables raise."""

    def replace(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise UnknownVariable(f"no value for Grafana variable ${name} in query: {query}")
        return values[name]

    return _VARIABLE.sub(replace, query)


def grafana_values(
    job: str = "nanochat", rate_interval: str = "1m", interval: str = "15s", range_: str = "5m"
) -> dict[str, str]:
    """Concrete values for the dashboard variables and Grafana's built-in interval and range ones.

    `rate_interval` should be at least four scrape intervals of the Prometheus that runs the queries.
    """
    seconds = _duration_seconds(range_)
    return {
        "job": job,
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__interval_ms": str(_duration_seconds(interval) * 1000),
        "__range": range_,
        "__range_s": str(seconds),
        "__range_ms": str(seconds * 1000),
    }


def _duration_seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+)([smhd])", duration)
    if not match:
        raise ValueError(f"expected a duration like 30s, 5m, 1h or 1d, got {duration!r}")
    return int(match[1]) * units[match[2]]


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # the panels of a collapsed row


def dashboard_queries(path: Path | str, **values: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every Prometheus query of the dashboard at `path`, variables substituted.

    Keyword arguments override `grafana_values()` (job, rate_interval, interval, range_).
    """
    dashboard = json.loads(Path(path).read_text())
    concrete = grafana_values(**values)
    queries = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                queries.append((panel["title"], substitute(target["expr"], concrete)))
    return queries


def alert_rules(directory: Path | str = ALERTS_DIR) -> list[dict]:
    """Every alerting rule of `alerts/*.rules.yaml`: dicts with alert, expr, for, labels, annotations."""
    rules = []
    for path in sorted(Path(directory).glob("*.rules.yaml")):
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            rules.extend(rule for rule in group["rules"] if "alert" in rule)
    return rules


def grafana_rule_queries(path: Path | str = GRAFANA_ALERTING) -> list[tuple[str, str]]:
    """(rule title, PromQL) for every datasource query of the Grafana alert rules in a provisioning file
    (server-side expressions, datasource `__expr__`, are not PromQL and are left out)."""
    document = yaml.safe_load(Path(path).read_text())
    return [
        (rule["title"], query["model"]["expr"])
        for group in document.get("groups", [])
        for rule in group["rules"]
        for query in rule["data"]
        if query["datasourceUid"] != "__expr__"
    ]


def selectors(query: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, {label: "op value"}) for every series selector of `query`, e.g.
    ("up", {"job": '="nanochat"'}). Raises ValueError when the query does not parse."""
    found = []

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = node.matchers.matchers
            name = node.name or next((m.value for m in matchers if m.name == "__name__"), "")
            ops = {m.name: f'{_MATCH_OPS[str(m.op).rsplit(".", 1)[-1]]}"{m.value}"' for m in matchers}
            found.append((name, ops))

    promql_parser.walk(promql_parser.parse(query), visit)
    return found


def documented_metrics() -> dict[str, str]:
    """metric name -> type (counter, gauge, histogram), for every metric of the catalog."""
    return {metric.name: metric.type for metric in catalog.CATALOG}


def exposed_series_names(metrics: dict[str, str]) -> set[str]:
    """The series names the given metrics expose: histograms as _bucket, _sum and _count."""
    known = catalog.by_name()
    return {series for name in metrics for series in known[name].series}
