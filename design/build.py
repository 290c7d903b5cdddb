"""Render the generated parts of `docs/design.md` and its architecture diagram.

    python -m design.build           # rewrite docs/design.md's tables, redraw docs/design/architecture.png
    python -m design.build --check   # exit 1 when either is not what the sources give

The sources: `design/architecture.yaml` (boxes on a grid and the edges between them), `loadtest/slo.yaml`
(the SLO table, each objective with the comment it carries there and the alerts whose threshold it is, found
by building the alert rules of alerts/build.py with that one objective changed) and
`design/failure_modes.yaml` (the failure-mode table, with each fault's outcome in the committed `make chaos`
report, docs/experiments/chaos/chaos.json: rebuild after a new run). Only the text between
`<!-- generated:NAME -->` and `<!-- end generated:NAME -->` in docs/design.md is rewritten; the prose around
it is edited by hand.

The PNG is drawn with matplotlib. Its pixels depend on matplotlib's and FreeType's versions, so `--check`
does not compare them: the PNG carries the SHA-256 of architecture.yaml in a text chunk (`Source-SHA256`), and
the check compares that with the file's current hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

from alerts.build import alerts
from loadtest.slo import SLO_FILE, SloError, load_slos

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "design.md"
ARCHITECTURE = ROOT / "design" / "architecture.yaml"
FAILURE_MODES = ROOT / "design" / "failure_modes.yaml"
PNG = ROOT / "docs" / "design" / "architecture.png"
CHAOS_REPORT = ROOT / "docs" / "experiments" / "chaos" / "chaos.json"  # bench/chaos.py's DEFAULT_OUT
HASH_KEY = "Source-SHA256"
BOX_W, BOX_H, COL_W, ROW_H = 2.3, 0.95, 2.75, 1.0


class DesignError(ValueError):
    """A source file is malformed or docs/design.md lacks a generated block; the message says which."""


def source_hash(path: Path | None = None) -> str:
    return hashlib.sha256((path or ARCHITECTURE).read_bytes()).hexdigest()


def read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DesignError(f"cannot read {path}: {e}") from None


def draw(out: Path | None = None, source: Path | None = None) -> Path:
    """Draw the boxes and edges of `source` to a PNG with the source's hash in its metadata."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    out, source = out or PNG, source or ARCHITECTURE
    spec = read_yaml(source)
    boxes = spec.get("boxes") or {}
    for kind in ("edges", "signals"):
        for edge in spec.get(kind) or []:
            missing = [name for name in edge[:2] if name not in boxes]
            if missing:
                raise DesignError(f"{source}: {kind} {edge} names no box {missing}")
    cols = max(b["col"] for b in boxes.values()) + 1
    rows = max(b["row"] for b in boxes.values()) + 1
    fig, ax = plt.subplots(figsize=(cols * COL_W * 0.95, rows * ROW_H * 1.25 + 0.6), dpi=110)
    ax.set_xlim(-0.2, cols * COL_W - 0.2)
    ax.set_ylim(-(rows - 1) * ROW_H * 1.25 - BOX_H, BOX_H * 0.9)
    ax.axis("off")

    def centre(name: str) -> tuple[float, float]:
        box = boxes[name]
        return box["col"] * COL_W + BOX_W / 2, -box["row"] * ROW_H * 1.25

    def border(x: float, y: float, to_x: float, to_y: float) -> tuple[float, float]:
        """Where the line from a box's centre (x, y) towards (to_x, to_y) leaves the box."""
        dx, dy = to_x - x, to_y - y
        half_w, half_h = BOX_W / 2 + 0.04, BOX_H / 2 + 0.04
        t = min(half_w / abs(dx) if dx else float("inf"), half_h / abs(dy) if dy else float("inf"))
        return x + t * dx, y + t * dy

    for name, box in boxes.items():
        x, y = centre(name)
        corner = (x - BOX_W / 2, y - BOX_H / 2)
        style = {
            "boxstyle": "round,pad=0.03",
            "facecolor": "#eef3fb",
            "edgecolor": "#4c72b0",
            "linewidth": 1.2,
        }
        ax.add_patch(FancyBboxPatch(corner, BOX_W, BOX_H, **style))
        ax.text(x, y, box["text"], ha="center", va="center", fontsize=7.5, linespacing=1.3)
    for kind, style in (("edges", "-"), ("signals", "--")):
        for edge in spec.get(kind) or []:
            (x0, y0), (x1, y1) = centre(edge[0]), centre(edge[1])
            arrow = FancyArrowPatch(
                border(x0, y0, x1, y1), border(x1, y1, x0, y0), arrowstyle="-|>", mutation_scale=10,
                linestyle=style, color="#333333", linewidth=1.0, shrinkA=1, shrinkB=1,
            )  # fmt: skip
            ax.add_patch(arrow)
            if len(edge) > 2:
                ax.text(
                    (x0 + x1) / 2, (y0 + y1) / 2 + 0.08, edge[2], ha="center", fontsize=6.5, color="#555555"
                )
    ax.set_title(spec.get("title", ""), fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None, HASH_KEY: source_hash(source)})
    plt.close(fig)
    return out


def png_hash(path: Path | None = None) -> str | None:
    """The source hash recorded in a PNG's text chunks, or None."""
    from PIL import Image

    try:
        with Image.open(path or PNG) as image:
            return image.text.get(HASH_KEY)
    except OSError:
        return None


def slo_comments(path: Path = SLO_FILE) -> dict[str, str]:
    """Each objective's end-of-line comment in the SLO file: what it measures."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(\w+):[^#]*#\s*(.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def alerts_of_slo(slo: dict[str, float]) -> dict[str, list[str]]:
    """For each objective, the alerts whose rule changes when that objective alone changes."""
    base = {a.name: a.expr for a in alerts(slo)}
    found = {}
    for key, value in slo.items():
        changed = {a.name: a.expr for a in alerts({**slo, key: value * 1.5 + 1})}
        found[key] = sorted(name for name, expr in changed.items() if base.get(name) != expr)
    return found


def slo_table(slo: dict[str, float]) -> str:
    comments, enforced = slo_comments(), alerts_of_slo(slo)
    lines = ["| objective | target | what it measures | alerted by |", "|---|---|---|---|"]
    for key, value in slo.items():
        by = ", ".join(f"`{a}`" for a in enforced[key]) or "the release gate only (`loadtest/gate.py`)"
        lines.append(f"| `{key}` | {value:g} | {comments.get(key, '')} | {by} |")
    return "\n".join(lines)


def failure_modes(path: Path = FAILURE_MODES) -> list[dict]:
    modes = read_yaml(path)
    required = ("name", "what", "alerts", "other_signals", "mitigation", "proof", "chaos")
    if not isinstance(modes, list) or not modes:
        raise DesignError(f"{path}: expected a list of failure modes")
    for mode in modes:
        missing = [k for k in required if k not in (mode or {})]
        if missing:
            raise DesignError(f"{path}: failure mode {mode.get('name', mode)!r} lacks {', '.join(missing)}")
    return modes


def chaos_outcomes(path: Path | None = None) -> dict[str, str]:
    """Each fault's outcome in the committed `make chaos` report: "held" or "did not hold"."""
    try:
        report = json.loads((path or CHAOS_REPORT).read_text())
    except (OSError, ValueError):
        return {}
    return {f["name"]: "held" if f["held"] else "did not hold" for f in report.get("faults", [])}


def failure_table(modes: list[dict]) -> str:
    ran = chaos_outcomes()
    lines = [
        "| failure | detection | mitigation | proof | `make chaos` (last committed run) |",
        "|---|---|---|---|---|",
    ]
    for mode in modes:
        # links from docs/: the Prometheus rules' runbooks, then those of infra's Cloud Monitoring policies
        links = [f"[`{a}`](runbooks/{a}.md)" for a in mode["alerts"]]
        links += [f"[`{p['name']}`](runbooks/{p['runbook']})" for p in mode.get("policies", [])]
        detection = "; ".join(p for p in (", ".join(links), mode["other_signals"]) if p)
        proof = "<br>".join(f"`{p.split('::')[-1]}` ({p.split('::')[0]})" for p in mode["proof"])
        chaos = ", ".join(f"`{c}` ({ran.get(c, 'not run')})" for c in mode["chaos"]) or "–"
        failure = f"**{mode['name']}**: {mode['what']}"
        lines.append(f"| {failure} | {detection} | {mode['mitigation']} | {proof} | {chaos} |")
    return "\n".join(lines)


def blocks() -> dict[str, str]:
    return {
        "slo": slo_table(load_slos()),
        "failure-modes": failure_table(failure_modes()),
    }


def render(doc: str, generated: dict[str, str]) -> str:
    for name, text in generated.items():
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n).*?(<!-- end generated:{name} -->)", flags=re.DOTALL
        )
        if not pattern.search(doc):
            raise DesignError(
                f"{DOC} lacks the block <!-- generated:{name} --> … <!-- end generated:{name} -->"
            )
        doc = pattern.sub(lambda m, text=text: m.group(1) + text + "\n" + m.group(2), doc)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m design.build", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the doc or the diagram is stale")
    args = parser.parse_args(argv)
    try:
        current = DOC.read_text(encoding="utf-8")
        text = render(current, blocks())
        if args.check:
            stale = [str(DOC)] if text != current else []
            if png_hash() != source_hash():
                stale.append(str(PNG))
            if stale:
                print(f"{', '.join(stale)} stale: run `python -m design.build`", file=sys.stderr)
                return 1
            return 0
        DOC.write_text(text, encoding="utf-8")
        draw()
    except (DesignError, SloError) as e:
        print(f"design.build: {e}", file=sys.stderr)
        return 2
    print(f"wrote {DOC} and {PNG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
