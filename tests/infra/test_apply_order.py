"""The first apply on an empty project, read from the synthesized dependency graph.

Edges are `depends_on` and every `${type.name...}` / `${data.type.name...}` reference, followed
transitively. Every resource and data source must come after the API wait, which comes after every API
enablement; PromQL alert policies exist only once the env is `monitored` (Managed Prometheus rejects
conditions on metrics that were never written).
"""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.slow

REFERENCE = re.compile(r"\$\{(data\.[a-z0-9_]+\.[A-Za-z0-9_-]+|[a-z0-9_]+\.[A-Za-z0-9_-]+)")


def graph(data: dict) -> dict[str, set[str]]:
    """address -> the addresses it depends on directly (`type.name`, `data.type.name`)."""
    nodes: dict[str, dict] = {}
    for rtype, by_name in data.get("resource", {}).items():
        nodes |= {f"{rtype}.{name}": body for name, body in by_name.items()}
    for dtype, by_name in data.get("data", {}).items():
        nodes |= {f"data.{dtype}.{name}": body for name, body in by_name.items()}
    edges = {}
    for address, body in nodes.items():
        refs = set(REFERENCE.findall(json.dumps({k: v for k, v in body.items() if k != "depends_on"})))
        edges[address] = {a for a in refs | set(body.get("depends_on", [])) if a in nodes}
    return edges


def ancestors(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for parent in edges[todo.pop()]:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def promql_policies(data: dict) -> list[str]:
    return [
        name
        for name, body in data.get("resource", {}).get("google_monitoring_alert_policy", {}).items()
        if any("condition_prometheus_query_language" in c for c in body["conditions"])
    ]


def check_order(data: dict) -> None:
    edges = graph(data)
    waits = [a for a in edges if a.startswith("time_sleep.")]
    assert len(waits) == 1, f"expected one API wait (time_sleep), got {waits}"
    (wait,) = waits
    apis = {a for a in edges if a.startswith("google_project_service.")}
    assert apis and edges[wait] == apis, "the API wait depends on every enablement, and only on them"
    for address in edges:
        if address == wait or address in apis:
            continue
        before = ancestors(edges, address)
        assert wait in before, f"{address} does not wait for the APIs"
        assert apis <= before, f"{address} does not come after every API enablement"


def test_the_graph_walk_sees_references_and_depends_on():
    data = {
        "resource": {
            "a": {"x": {}},
            "b": {"y": {"depends_on": ["a.x"]}},
            "c": {"z": {"ref": "${b.y.id}"}},
        },
        "data": {"d": {"w": {"v": "${c.z.name}"}}},
    }
    edges = graph(data)
    assert ancestors(edges, "data.d.w") == {"c.z", "b.y", "a.x"}
    with pytest.raises(AssertionError):
        check_order(data)  # no API wait at all


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_foundation_waits_for_the_apis_and_has_no_promql_policy(stacks, env):
    synth = stacks[env]
    assert synth.cfg.phase == "foundation"
    check_order(synth.data)
    assert promql_policies(synth.data) == []
    assert not synth.of_type("google_monitoring_uptime_check_config")


@pytest.mark.parametrize("name", ["devmon", "prodmon", "devrel"])
def test_later_phases_wait_for_the_apis_too(variants, name):
    check_order(variants[name].data)


def test_promql_policies_exist_once_monitored(variants):
    assert promql_policies(variants["devmon"].data) and promql_policies(variants["prodmon"].data)
    assert promql_policies(variants["devrel"].data) == []  # released, not monitored


def test_the_wait_follows_every_api_and_runs_again_when_they_change(stacks):
    data = stacks["dev"].data
    (wait,) = data["resource"]["time_sleep"].values()
    services = data["resource"]["google_project_service"]
    assert sorted(wait["depends_on"]) == sorted(f"google_project_service.{n}" for n in services)
    assert wait["create_duration"].endswith("s") and int(wait["create_duration"][:-1]) >= 60
    assert wait["triggers"]["services"] == ",".join(sorted(s["service"] for s in services.values()))
