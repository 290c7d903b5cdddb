"""`cloud`: a fake Google Cloud (tests/scripts/fake_cloud.py) on the scripts' PATH, with the repository's
env files copied to a folder of the test's own (the scripts edit `phase:`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).with_name("fake_cloud.py")
PROJECT_NUMBER = "123456789012"


class Cloud:
    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.bin = folder / "bin"
        self.envs = folder / "envs"
        self.bin.mkdir()
        self.envs.mkdir()
        for tool in ("gcloud", "curl", "cdktf", "gate"):
            self._wrapper(tool, f'exec {sys.executable} {FAKE} {tool} "$@"')
        for tool in ("npx", "terraform"):  # present for preflight's tool check; never run
            self._wrapper(tool, f'echo "{tool} called: $*" >&2; exit 99')
        for env in ("dev", "prod"):
            shutil.copy(ROOT / "envs" / f"{env}.yaml", self.envs)
        # dev as a user with an SMTP relay has it: a declared secret that bootstrap must ask for
        dev = self.envs / "dev.yaml"
        text = dev.read_text()
        assert "\nsecrets: {}\n" in text, "envs/dev.yaml changed its secrets: adjust this fixture"
        dev.write_text(
            text.replace("\nsecrets: {}\n", '\nsecrets:\n  grafana-smtp-password: "SMTP password"\n')
        )
        self.state = self._fresh_state()
        self.save()

    def _wrapper(self, tool: str, line: str) -> None:
        path = self.bin / tool
        path.write_text(f"#!/bin/sh\n{line}\n")
        path.chmod(0o755)

    def env_config(self, env: str = "dev") -> dict:
        return yaml.safe_load((self.envs / f"{env}.yaml").read_text())

    def _fresh_state(self) -> dict:
        """A new project: billing on, nothing else; the account is its owner."""
        dev, prod = self.env_config("dev"), self.env_config("prod")
        projects = {
            cfg["project"]: {
                "projectId": cfg["project"],
                "lifecycleState": "ACTIVE",
                "projectNumber": PROJECT_NUMBER,
                "billingEnabled": True,
            }
            for cfg in (dev, prod)
        }
        emails = dev["monitoring"]["alert_emails"] + prod["monitoring"]["alert_emails"]
        return {
            "account": "owner@example.com",
            "credentials": "user",
            "can_list_buckets": False,
            "projects": projects,
            "buckets": {},
            "enabled_services": [],
            "secrets": {},
            "images": {},
            "builds": [],
            "run": {},
            "migs": {},
            "project_quotas": [{"metric": "GPUS_ALL_REGIONS", "limit": 4.0, "usage": 0.0}],
            "region_quotas": [
                {"metric": "NVIDIA_L4_GPUS", "limit": 4.0, "usage": 0.0},
                {"metric": "PREEMPTIBLE_NVIDIA_L4_GPUS", "limit": 4.0, "usage": 0.0},
            ],
            "channels": [
                {"type": "email", "labels": {"email_address": e}, "verificationStatus": "VERIFIED"}
                for e in emails
            ],
            "budgets": [
                {"displayName": "nanochat", "budgetFilter": {"projects": [f"projects/{PROJECT_NUMBER}"]}}
            ],
            "functions": {"nanochat-kill-switch-dev": {"state": "ACTIVE"}},
            "permissions": ["*"],
            "billing_permissions": ["*"],
            "series": {},
            "chat_status": 200,
            "grafana_status": 200,
            "chats": [],
            "applies": [],
            "gates": [],
            "gate_status": 0,
            "fail": {},
        }

    def save(self) -> None:
        (self.dir / "state.json").write_text(json.dumps(self.state, indent=1))

    def load(self) -> dict:
        self.state = json.loads((self.dir / "state.json").read_text())
        return self.state

    def calls(self, tool: str = "gcloud") -> list[list[str]]:
        log = self.dir / "calls.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        return [call[1:] for call in map(json.loads, lines) if call[0] == tool]

    def clear_calls(self) -> None:
        (self.dir / "calls.jsonl").unlink(missing_ok=True)

    def apply(self, env: str = "dev") -> None:
        """What `cdktf deploy` makes in the env's phase (the fake stack)."""
        self.save()
        self.run_tool("cdktf", "deploy", env, "--auto-approve")

    def run_tool(self, tool: str, *args: str) -> None:
        subprocess.run([str(self.bin / tool), *args], env=self.environ(), check=True, capture_output=True)
        self.load()

    def environ(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_ACTIONS", "CI", "LOADTEST_ID_TOKEN")}
        env.update(
            PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            FAKE_CLOUD_DIR=str(self.dir),
            ENVS_DIR=str(self.envs),
            PYTHON=sys.executable,
            CDKTF=str(self.bin / "cdktf"),
            LOADTEST_GATE=str(self.bin / "gate"),
            POLL_S="0",
            METRICS_WAIT_S="0",
        )
        env.update(extra)
        return env

    def script(
        self, name: str, *args: str, stdin: str | None = None, **extra: str
    ) -> subprocess.CompletedProcess:
        """Run scripts/NAME against the fake cloud (state saved first, reloaded after)."""
        self.save()
        result = subprocess.run(
            [str(ROOT / "scripts" / name), *args],
            cwd=ROOT,
            env=self.environ(**extra),
            input=stdin or "",
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.load()
        return result


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    return Cloud(tmp_path)


@pytest.fixture
def founded(cloud: Cloud) -> Cloud:
    """dev after the foundation apply: Cloud Run on its placeholder, the GPU group at 0, the build bucket."""
    cloud.apply("dev")
    cloud.clear_calls()
    return cloud
