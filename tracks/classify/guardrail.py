"""How the guardrail (app/guardrail.py) screens labeled texts: the rules alone, the classifier alone and
both together, and the classifier over a sweep of thresholds. `nanochat classify train --dataset guardrail`
writes this into the model's report; the service itself never imports it.
"""

from __future__ import annotations

from typing import Any

from app.guardrail import INJECTION, Guardrail, match_rule

SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def evaluate_screen(guardrail: Guardrail, texts: list[str], labels: list[str]) -> dict[str, Any]:
    """How the rules alone, the classifier alone and both together do on labeled texts: the share of
    injections caught (recall) and of benign texts stopped (false-positive rate)."""
    scores = guardrail.score(texts)
    rules = [match_rule(t) is not None for t in texts]
    model = [s >= guardrail.threshold for s in scores]
    verdicts = {
        "rules": rules,
        "model": model,
        "combined": [r or m for r, m in zip(rules, model, strict=True)],
    }
    injections = [i for i, label in enumerate(labels) if label == INJECTION]
    benign = [i for i, label in enumerate(labels) if label != INJECTION]
    result: dict[str, Any] = {
        "threshold": guardrail.threshold,
        "injections": len(injections),
        "benign": len(benign),
    }
    for name, flagged in verdicts.items():
        caught = sum(flagged[i] for i in injections)
        false_alarms = sum(flagged[i] for i in benign)
        result[name] = {
            "recall": round(caught / len(injections), 4) if injections else None,
            "false_positive_rate": round(false_alarms / len(benign), 4) if benign else None,
            "caught": caught,
            "false_alarms": false_alarms,
        }
    result["model_threshold_sweep"] = [
        {
            "threshold": t,
            "recall": round(sum(scores[i] >= t for i in injections) / max(len(injections), 1), 4),
            "false_positive_rate": round(sum(scores[i] >= t for i in benign) / max(len(benign), 1), 4),
        }
        for t in SWEEP
    ]
    return result
