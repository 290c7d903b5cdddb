"""Day 22: error analysis of a classifier's predictions.

1. `confident_mistakes(texts, truth, predicted, confidence, k)`: the k wrong predictions the model was
   most sure of, most confident first, each {"text", "true", "predicted", "confidence"}.
2. `per_class_recall(truth, predicted)`: {label: the share of that label's examples predicted as it}, for
   every label in `truth`.
3. `worst_class(truth, predicted)`: the label with the lowest recall.
"""


def confident_mistakes(texts, truth, predicted, confidence, k: int = 5) -> list[dict]:
    rows = [
        {"text": t, "true": y, "predicted": p, "confidence": c}
        for t, y, p, c in zip(texts, truth, predicted, confidence, strict=True)
    ]
    # TODO: keep the mistakes only, most confident first, at most k
    raise NotImplementedError("filter, sort and cut the rows")


def per_class_recall(truth, predicted) -> dict[str, float]:
    # TODO: for each label in truth: correct predictions of it / its examples
    raise NotImplementedError("recall per class")


def worst_class(truth, predicted) -> str:
    recall = per_class_recall(truth, predicted)
    return min(recall, key=recall.get)
