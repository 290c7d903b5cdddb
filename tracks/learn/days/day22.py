"""Day 22: confident mistakes and per-class recall on hand-made predictions with known answers."""

from __future__ import annotations

from types import ModuleType

from tracks.learn.core import Exercise, Failure

TEXTS = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8"]
TRUTH = ["cat", "cat", "cat", "cat", "dog", "dog", "bird", "bird", "bird"]
PREDICTED = ["cat", "dog", "dog", "cat", "dog", "cat", "cat", "bird", "bird"]
CONFIDENCE = [0.99, 0.55, 0.91, 0.60, 0.80, 0.70, 0.95, 0.50, 0.85]
GIVEN = "9 predictions: truth cat×4, dog×2, bird×3; 4 mistakes (t1 0.55, t2 0.91, t5 0.70, t6 0.95)"


def check(module: ModuleType) -> None:
    rows = module.confident_mistakes(TEXTS, TRUTH, PREDICTED, CONFIDENCE, k=3)
    texts = [row["text"] for row in rows]
    if any(row["true"] == row["predicted"] for row in rows):
        raise Failure(
            "correct predictions are listed as mistakes",
            GIVEN + ", k=3",
            "['t6', 't2', 't5']",
            str(texts),
            "keep only the rows where true != predicted, before sorting",
        )
    if texts != ["t6", "t2", "t5"]:
        hint = "sort by confidence, highest first, then cut to k"
        if texts == ["t1", "t5", "t2"]:
            hint = "those are the least confident mistakes: sort descending (key=-confidence)"
        raise Failure(
            "not the k most confident mistakes, most confident first",
            GIVEN + ", k=3",
            "['t6', 't2', 't5']",
            str(texts),
            hint,
        )
    recall = module.per_class_recall(TRUTH, PREDICTED)
    want = {"bird": 2 / 3, "cat": 0.5, "dog": 0.5}
    if set(recall) != set(want) or any(abs(recall[k] - v) > 1e-9 for k, v in want.items()):
        hint = "recall of a label = its examples predicted correctly / its examples"
        if abs(recall.get("bird", 0) - 1.0) < 1e-9 and abs(recall.get("dog", 0) - 1 / 3) < 1e-9:
            hint = (
                "that is precision (divided by how often it was predicted); recall divides by the true count"
            )
        raise Failure("per-class recall is wrong", GIVEN, _fmt(want), _fmt(recall), hint)
    truth = ["a"] * 4 + ["b"] * 4
    predicted = ["a"] * 4 + ["a", "a", "a", "b"]
    worst = module.worst_class(truth, predicted)
    if worst != "b":
        raise Failure(
            "the worst class is wrong",
            "truth a×4 b×4, predicted all a except one b",
            "'b' (recall 0.25)",
            repr(worst),
            "the lowest recall, not the lowest count or precision",
        )


def _fmt(recall: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:.3g}" for k, v in sorted(recall.items())) + "}"


HINTS = (
    "Mistakes first (true != predicted), then order; recall is counted per true class.",
    "sorted(mistakes, key=lambda row: -row['confidence'])[:k]; recall = hits / examples of that label.",
    "for label in set(truth): mine = [p for y, p in zip(truth, predicted) if y == label]; "
    "recall[label] = sum(p == label for p in mine) / len(mine).",
)
EXERCISE = Exercise(
    22,
    "error_analysis",
    "error analysis",
    "intermediate",
    HINTS,
    ("tracks/classify/report.py: evaluate (tests/tracks/classify/test_commands.py)",),
    check,
)
