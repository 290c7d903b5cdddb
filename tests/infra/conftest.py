"""Fixtures for the infra tests: every env's stack, synthesized once per session.

Importing the Google provider bindings alone takes 10+ s, so the synth runs once (the same `build_app` as
`make synth`, into a temporary folder) and the tests share its output: the stack objects for the cdktf
Testing API, the parsed `cdk.tf.json` for everything else.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.config import EnvConfig, load_envs


@dataclass(frozen=True)
class Synthesized:
    cfg: EnvConfig
    stack: object  # cdktf TerraformStack
    text: str  # Testing.synth output, what the Testing API assertions take
    path: Path  # the stack's folder (cdk.tf.json), what checkov reads
    _data: dict

    @property
    def data(self) -> dict:
        """A private copy of the synthesized JSON, free to mutate."""
        return copy.deepcopy(self._data)

    def of_type(self, resource_type: str) -> dict[str, dict]:
        return copy.deepcopy(self._data.get("resource", {}).get(resource_type, {}))

    def one(self, resource_type: str, **match) -> dict:
        """The single resource of a type whose top-level fields equal `match`."""
        found = [
            body
            for body in self.of_type(resource_type).values()
            if all(body.get(k) == v for k, v in match.items())
        ]
        assert len(found) == 1, f"expected one {resource_type} with {match}, found {len(found)}"
        return found[0]


@pytest.fixture(scope="session")
def synth_out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synth") / "cdktf.out"


@pytest.fixture(scope="session")
def stacks(synth_out) -> dict[str, Synthesized]:
    from cdktf import Testing as T  # not `Testing`: pytest would try to collect it

    from infra.main import build_app

    configs = load_envs()
    app = build_app(configs, outdir=str(synth_out))
    app.synth()
    result = {}
    for cfg in configs:
        stack = app.node.find_child(cfg.name)
        folder = synth_out / "stacks" / cfg.name
        data = json.loads((folder / "cdk.tf.json").read_text())
        result[cfg.name] = Synthesized(cfg=cfg, stack=stack, text=T.synth(stack), path=folder, _data=data)
    return result


@pytest.fixture(scope="session")
def dev(stacks) -> Synthesized:
    return stacks["dev"]


@pytest.fixture(scope="session")
def prod(stacks) -> Synthesized:
    return stacks["prod"]


def _variant(cfg: EnvConfig, name: str, **update) -> EnvConfig:
    """`cfg` renamed (its own stack and resource names) with top-level fields and sections replaced."""
    sections = {
        key: getattr(cfg, key).model_copy(update=value) if isinstance(value, dict) else value
        for key, value in update.items()
    }
    return cfg.model_copy(update={"name": name, **sections})


def variant_configs() -> list[EnvConfig]:
    """The later bootstrap phases and optional features, on the committed env files:
    - devmon: dev monitored, with an uptime check on its private service;
    - prodmon: prod monitored (released: the autoscaler, the load balancer as committed), exporting traces;
    - devrel: dev released with working hours, an HTTP-only load balancer and the push trigger."""
    from infra.config import GpuSchedule

    envs = {cfg.name: cfg for cfg in load_envs()}
    dev, prod = envs["dev"], envs["prod"]
    return [
        _variant(dev, "devmon", phase="monitored", monitoring={"uptime_check_period_s": 300}),
        _variant(
            prod,
            "prodmon",
            phase="monitored",  # and traced: a collector beside the app
            service={"env": {**prod.service.env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}},
        ),
        _variant(
            dev,
            "devrel",
            phase="released",
            github={"build_on_push": True},
            gpu={
                "schedule": GpuSchedule(start="0 8 * * 1-5", stop="0 19 * * 1-5", time_zone="Europe/Berlin"),
                "load_balancer": True,
                "insecure_http": True,
            },
        ),
    ]


@pytest.fixture(scope="session")
def variants(stacks, tmp_path_factory) -> dict[str, Synthesized]:
    """The variant configs' stacks, synthesized once per session in one app (after the env files')."""
    from infra.main import build_app

    outdir = tmp_path_factory.mktemp("variants") / "cdktf.out"
    configs = variant_configs()
    build_app(configs, outdir=str(outdir)).synth()
    result = {}
    for cfg in configs:
        folder = outdir / "stacks" / cfg.name
        data = json.loads((folder / "cdk.tf.json").read_text())
        result[cfg.name] = Synthesized(cfg=cfg, stack=None, text="", path=folder, _data=data)
    return result
