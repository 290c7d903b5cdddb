"""Train, compare and report: the whole scikit-learn experiment as one function, `run_experiment`.

1. Split the data once (stratified, seeded): 80% for model selection and training, 20% held out.
2. Compare the candidates by stratified k-fold cross-validation on the 80%.
3. Fit the chosen candidate on the 80% and evaluate it on the 20% it never saw: accuracy, macro-F1,
   per-class precision/recall/F1, the confusion matrix (PNG), the most confident mistakes with the words
   that pushed the model there, the most confused class pairs, train time and inference latency per text.

The result is a dict (report.json) and its markdown rendering (report.md); `commands` saves the fitted
model with them into the registry.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from sklearn.pipeline import Pipeline

from tracks.classify.dataset import LabeledTexts, stratified_split
from tracks.classify.pipelines import CANDIDATES, build_pipeline, confidence, cross_validate

WORST = 10  # mistakes listed in the report
LATENCY_SAMPLES = 200  # single-text predictions timed for the latency percentiles


def evaluate(pipeline: Pipeline, test: LabeledTexts, worst: int = WORST) -> dict[str, Any]:
    """Metrics of a fitted pipeline on `test`, with its most confident mistakes and confused pairs."""
    predicted, conf = confidence(pipeline, test.texts)
    labels = [str(c) for c in pipeline.classes_]
    truth = test.labels
    per_class = classification_report(truth, predicted, labels=labels, output_dict=True, zero_division=0)
    matrix = confusion_matrix(truth, predicted, labels=labels)
    mistakes = [i for i, (t, p) in enumerate(zip(truth, predicted, strict=True)) if t != p]
    mistakes.sort(key=lambda i: -conf[i])
    return {
        "examples": len(truth),
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "macro_f1": round(float(f1_score(truth, predicted, labels=labels, average="macro")), 4),
        "per_class": {
            label: {
                "precision": round(per_class[label]["precision"], 4),
                "recall": round(per_class[label]["recall"], 4),
                "f1": round(per_class[label]["f1-score"], 4),
                "support": int(per_class[label]["support"]),
            }
            for label in labels
        },
        "labels": labels,
        "confusion_matrix": matrix.tolist(),
        "confused_pairs": confused_pairs(matrix, labels),
        "worst_predictions": [
            {
                "text": test.texts[i],
                "true": truth[i],
                "predicted": str(predicted[i]),
                "confidence": round(float(conf[i]), 4),
                "evidence": top_terms(pipeline, test.texts[i], str(predicted[i]), truth[i]),
            }
            for i in mistakes[:worst]
        ],
    }


def confused_pairs(matrix: np.ndarray, labels: list[str], top: int = 5) -> list[dict[str, Any]]:
    """The off-diagonal cells with the most examples: (true, predicted, count, share of the true class)."""
    pairs = []
    for i, true in enumerate(labels):
        row_total = int(matrix[i].sum())
        for j, predicted in enumerate(labels):
            if i != j and matrix[i, j]:
                share = matrix[i, j] / row_total
                pairs.append(
                    {"true": true, "predicted": predicted, "count": int(matrix[i, j]), "share": share}
                )
    pairs.sort(key=lambda p: (-p["count"], p["true"]))
    return [p | {"share": round(p["share"], 3)} for p in pairs[:top]]


def top_terms(pipeline: Pipeline, text: str, predicted: str, true: str, k: int = 5) -> list[str]:
    """For linear models: the terms of `text` that favour `predicted` over `true` the most (weight x
    TF-IDF). An error analysis in one line: which words misled the model. [] for other models."""
    model = pipeline.named_steps["model"]
    vectorizer = pipeline.named_steps["tfidf"]
    if not hasattr(model, "coef_"):
        return []
    classes = [str(c) for c in model.classes_]
    features = vectorizer.transform([text]).tocsr()
    coef = model.coef_
    if coef.shape[0] == 1:  # binary: one weight vector, for classes[1]
        direction = coef[0] if predicted == classes[1] else -coef[0]
    else:
        direction = coef[classes.index(predicted)] - coef[classes.index(true)]
    names = vectorizer.get_feature_names_out()
    contributions = [(features.data[n] * direction[j], names[j]) for n, j in enumerate(features.indices)]
    contributions.sort(reverse=True)
    return [name for value, name in contributions[:k] if value > 0]


def latency(pipeline: Pipeline, texts: list[str]) -> dict[str, float]:
    """Milliseconds per text: one text per call (median, p95) and in one batch call."""
    sample = texts[:LATENCY_SAMPLES]
    pipeline.predict(sample[:5])  # warm-up
    singles = []
    for text in sample:
        start = time.perf_counter()
        pipeline.predict([text])
        singles.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    pipeline.predict(texts)
    batch = (time.perf_counter() - start) * 1000 / len(texts)
    singles.sort()
    return {
        "single_text_ms_p50": round(statistics.median(singles), 3),
        "single_text_ms_p95": round(singles[min(len(singles) - 1, int(0.95 * len(singles)))], 3),
        "batch_ms_per_text": round(batch, 4),
        "texts_timed": len(sample),
    }


def run_experiment(
    data: LabeledTexts,
    model: str = "logreg",
    features: str = "words",
    folds: int = 5,
    seed: int = 0,
    test_fraction: float = 0.2,
    candidates: tuple[str, ...] = CANDIDATES,
) -> tuple[Pipeline, dict[str, Any]]:
    """Compare `candidates` by cross-validation, fit `model` and evaluate it on the held-out split.

    Returns the fitted pipeline and the report dict."""
    train, test = stratified_split(data, test_fraction, seed)
    cv = {name: cross_validate(train, name, features, folds, seed).summary() for name in candidates}
    pipeline = build_pipeline(model, features, seed)
    start = time.perf_counter()
    pipeline.fit(train.texts, train.labels)
    train_seconds = time.perf_counter() - start
    return pipeline, {
        "dataset": data.describe(),
        "split": {
            "train": len(train.texts),
            "test": len(test.texts),
            "test_fraction": test_fraction,
            "seed": seed,
        },
        "features": features,
        "cross_validation": {"folds": folds, "seed": seed, "models": cv},
        "model": model,
        "train_seconds": round(train_seconds, 3),
        "test": evaluate(pipeline, test),
        "latency": latency(pipeline, test.texts),
    }


def plot_confusion(report: dict[str, Any], path: str | Path) -> Path:
    """The held-out confusion matrix as a PNG (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = report["test"]["labels"]
    matrix = np.array(report["test"]["confusion_matrix"])
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{report['dataset']['name']}: {report['model']} on the held-out split")
    threshold = matrix.max() / 2
    for i in range(len(labels)):
        for j in range(len(labels)):
            color = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def markdown(report: dict[str, Any], confusion_png: str | None = "confusion.png") -> str:
    """report.md: the same figures as report.json, for people."""
    data, test, lat = report["dataset"], report["test"], report["latency"]
    counts = ", ".join(f"{label} {n}" for label, n in data["classes"].items())
    lines = [
        f"# Text classifier: {data['name']}",
        "",
        f"Data: {data['examples']:,} examples, {len(data['classes'])} classes ({counts}); "
        f"sha256 `{data['sha256'][:16]}…`.",
    ]
    if data.get("licence"):
        lines.append(f"Source: {data.get('title', data['name'])}. Licence: {data['licence']}.")
    split = report["split"]
    lines += [
        "",
        f"Split: {split['train']:,} for cross-validation and training, {split['test']:,} held out "
        f"(stratified, seed {split['seed']}). Features: TF-IDF {report['features']}.",
        "",
        f"## Model comparison ({report['cross_validation']['folds']}-fold stratified cross-validation)",
        "",
        "| model | accuracy | macro-F1 | fit s | predict ms/text |",
        "|---|---|---|---|---|",
    ]
    for name, s in report["cross_validation"]["models"].items():
        lines.append(
            f"| {name} | {s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f} | "
            f"{s['macro_f1_mean']:.3f} ± {s['macro_f1_std']:.3f} | {s['fit_seconds_mean']:.2f} | "
            f"{s['predict_ms_per_text']:.3f} |"
        )
    lines += [
        "",
        f"## `{report['model']}` on the held-out split",
        "",
        f"Accuracy **{test['accuracy']:.3f}**, macro-F1 **{test['macro_f1']:.3f}** on {test['examples']:,} "
        f"texts. Training took {report['train_seconds']:.2f} s. Latency per text: "
        f"{lat['single_text_ms_p50']:.2f} ms median, {lat['single_text_ms_p95']:.2f} ms p95 one at a time; "
        f"{lat['batch_ms_per_text']:.3f} ms in one batch.",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for label, m in test["per_class"].items():
        lines.append(
            f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
        )
    if confusion_png:
        lines += ["", f"![confusion matrix]({confusion_png})"]
    lines += ["", "### Most confused classes", "", "| true | predicted as | count | share of true class |"]
    lines.append("|---|---|---|---|")
    for p in test["confused_pairs"]:
        lines.append(f"| {p['true']} | {p['predicted']} | {p['count']} | {p['share']:.1%} |")
    lines += [
        "",
        "### Most confident mistakes",
        "",
        "`evidence`: the words of the text that pushed the model from the true class to its answer.",
        "",
        "| true | predicted | confidence | evidence | text |",
        "|---|---|---|---|---|",
    ]
    for w in test["worst_predictions"]:
        text = " ".join(w["text"].split())
        text = (text[:140] + "…" if len(text) > 140 else text).replace("|", "\\|")
        evidence = ", ".join(w["evidence"]) or "-"
        lines.append(f"| {w['true']} | {w['predicted']} | {w['confidence']:.2f} | {evidence} | {text} |")
    lines.append("")
    return "\n".join(lines)
