"""Shared pytest fixtures, a hypothesis profile without timing, and the skip summary that ends every run.

The reference fixtures (a checkpoint, its tokenizer and the outputs the public nanochat code computes from
them) are part of the repository: `tests/data/nanochat-ref` (SOURCE.md says where they come from). Tests
reach them only through `reference_dir`, and never write there. `NANOCHAT_REF_FIXTURES=DIR` points the
tests at another copy; a folder without the files skips with a reason.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Generator, Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_FIXTURES = REPO_ROOT / "tests" / "data" / "nanochat-ref"


@pytest.fixture(scope="module")
def one_torch_thread() -> Generator[None]:
    """Torch on one thread for a test module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`):
    a 2M-parameter model decodes faster on one thread, and far faster when other processes share the cores
    (threads of one matmul then wait for each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The real-server fixtures (start_server, api_server, base_url, slow_checkpoint...) of tests/app, tests/bench
pytest_plugins = ["tests.servers"]


# No test may depend on how fast the machine is (a busy CI runner, `make test-stress`): no per-example
# deadline and no "too slow" health check for any @given (a test's own @settings add to this profile).
settings.register_profile("timing-independent", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("timing-independent")


@pytest.fixture(scope="session", autouse=True)
def no_cdktf_leftovers() -> Generator[None]:
    """cdktf's Testing app (a node process) synthesizes into `cdktf.outdir.*` folders of the temp folder and
    never removes them: the ones this session made go at its end."""
    import shutil
    import tempfile

    pattern = "cdktf.outdir.*"
    before = set(Path(tempfile.gettempdir()).glob(pattern))
    yield
    for folder in set(Path(tempfile.gettempdir()).glob(pattern)) - before:
        shutil.rmtree(folder, ignore_errors=True)


def _reference_root() -> Path:
    override = os.environ.get("NANOCHAT_REF_FIXTURES")
    return Path(override) if override else REFERENCE_FIXTURES


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The nanochat reference fixture folder (read-only); skips when NANOCHAT_REF_FIXTURES names a folder
    without them."""
    root = _reference_root()
    if not (root / "modelA" / "expected.json").is_file():
        where = "NANOCHAT_REF_FIXTURES" if root != REFERENCE_FIXTURES else "a clone without tests/data?"
        pytest.skip(f"nanochat reference fixtures not found at {root} ({where})")
    return root


@pytest.fixture(scope="session")
def expected(reference_dir: Path) -> dict:
    """modelA/expected.json: outputs computed by the public nanochat code."""
    return json.loads((reference_dir / "modelA" / "expected.json").read_text())


# ---- the skip summary -------------------------------------------------------------------------------------
# Skip reasons say how to install what is missing ("needs shellcheck (apt-get install -y shellcheck)");
# the last line of a run adds them up into one command.
_APT = re.compile(r"apt-get install (?:-\S+ )*([a-z0-9][a-z0-9.+-]*(?: [a-z0-9][a-z0-9.+-]*)*)")
_PIP = re.compile(
    r"pip install ((?:'[^']+'|[A-Za-z0-9][\w.\[\],-]*)(?: (?:'[^']+'|[A-Za-z0-9][\w.\[\],-]*))*)"
)
_REASON_CHARS = 120


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The first line of a skipped report's reason, without pytest's "Skipped: " prefix, shortened."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ").strip()
    reason = (reason.splitlines() or ["(no reason given)"])[0]
    return reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 1] + "…"


def install_command(reasons: Iterable[str], python: str = "python", root: bool = True) -> str | None:
    """One shell command installing every Debian and pip package the reasons name, or None."""
    apt: dict[str, None] = {}
    pip: dict[str, None] = {}
    for reason in reasons:
        for match in _APT.finditer(reason):
            apt.update(dict.fromkeys(match.group(1).split()))
        for match in _PIP.finditer(reason):
            pip.update(dict.fromkeys(match.group(1).split()))
    commands = []
    if apt:
        commands.append(f"{'' if root else 'sudo '}apt-get install -y {' '.join(apt)}")
    if pip:
        commands.append(f"{python} -m pip install {' '.join(pip)}")
    return " && ".join(commands) or None


def skip_summary(reasons: list[str], python: str = "python", root: bool = True) -> str:
    """`skipped N: <count> × <reason>; ... | install: <command>` (one line), or `skipped: nothing`."""
    if not reasons:
        return "skipped: nothing"
    counts = sorted(Counter(reasons).items(), key=lambda item: (-item[1], item[0]))
    line = f"skipped {len(reasons)}: " + "; ".join(f"{count} × {reason}" for reason, count in counts)
    command = install_command(reasons, python, root)
    unknown = sum(count for reason, count in counts if install_command([reason]) is None)
    if command:
        line += f" | install: {command}"
    if unknown:
        line += f" | {unknown} without an install command"
    return line


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None]:
    """After pytest's own summary (this wrapper is the outermost): the skip summary as the last line."""
    result = yield
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reasons = [skip_reason(report) for report in reporter.stats.get("skipped", [])]
        python = sys.executable
        if Path(python).is_relative_to(Path.cwd()):
            python = str(Path(python).relative_to(Path.cwd()))
        reporter.write_line(skip_summary(reasons, python, root=os.geteuid() == 0))
    return result
