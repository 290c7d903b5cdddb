"""Day 22: error analysis (reference: tracks/classify/report.py `evaluate`: worst_predictions, per_class)."""


def confident_mistakes(texts, truth, predicted, confidence, k: int = 5) -> list[dict]:
    rows = [
        {"text": t, "true": y, "predicted": p, "confidence": c}
        for t, y, p, c in zip(texts, truth, predicted, confidence, strict=True)
    ]
    mistakes = [row for row in rows if row["true"] != row["predicted"]]
    return sorted(mistakes, key=lambda row: -row["confidence"])[:k]


def per_class_recall(truth, predicted) -> dict[str, float]:
    recall = {}
    for label in sorted(set(truth)):
        mine = [p for y, p in zip(truth, predicted, strict=True) if y == label]
        recall[label] = sum(p == label for p in mine) / len(mine)
    return recall


def worst_class(truth, predicted) -> str:
    recall = per_class_recall(truth, predicted)
    return min(recall, key=recall.get)
