"""The candidate classifiers and their comparison by stratified cross-validation.

Every candidate is one scikit-learn `Pipeline`: TF-IDF features (word 1-2-grams, and optionally character
2-5-grams inside word boundaries, which catch obfuscated spellings like "ign0re") followed by
- `logreg`: logistic regression (the default: calibrated-enough probabilities, fast, small);
- `linear_svc`: a linear support vector machine (often the most accurate linear model on text);
- `random_forest`: a random forest (non-linear; usually weaker on sparse text features, and large).

`cross_validate` fits each candidate on k-1 folds and predicts the held-out fold, k times, and returns
per-fold accuracy and macro-F1, fit time and prediction time per text, plus the out-of-fold predictions.
Everything is seeded; `n_jobs` stays 1 (this runs on shared CPU cores).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tracks.classify.dataset import DatasetError, LabeledTexts

if TYPE_CHECKING:  # scikit-learn takes ~1.5 s to import: only the functions that need it do
    from sklearn.pipeline import Pipeline

CANDIDATES = ("logreg", "linear_svc", "random_forest")
FEATURES = ("words", "words+chars")


def build_pipeline(name: str, features: str = "words", seed: int = 0) -> Pipeline:
    """A fresh, unfitted pipeline for candidate `name` over `features` ("words" or "words+chars")."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline
    from sklearn.svm import LinearSVC

    if features not in FEATURES:
        raise DatasetError(f"unknown features {features!r}; choose one of {', '.join(FEATURES)}")
    words = TfidfVectorizer(
        sublinear_tf=True, ngram_range=(1, 2), min_df=2, max_features=30_000, strip_accents="unicode"
    )
    vectorizer: TfidfVectorizer | FeatureUnion = words
    if features == "words+chars":
        chars = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(2, 5), min_df=2, max_features=30_000, sublinear_tf=True
        )
        vectorizer = FeatureUnion([("words", words), ("chars", chars)])
    if name == "logreg":
        model = LogisticRegression(
            C=5.0, solver="saga", max_iter=2000, class_weight="balanced", random_state=seed
        )
    elif name == "linear_svc":
        model = LinearSVC(C=0.5, class_weight="balanced", random_state=seed)
    elif name == "random_forest":
        model = RandomForestClassifier(
            n_estimators=200, class_weight="balanced_subsample", random_state=seed, n_jobs=1
        )
    else:
        raise DatasetError(f"unknown model {name!r}; choose one of {', '.join(CANDIDATES)}")
    return Pipeline([("tfidf", vectorizer), ("model", model)])


def confidence(pipeline: Pipeline, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels, confidence of each prediction): the class probability where the model has one,
    else the softmax of the decision function (LinearSVC), which ranks the same way."""
    if hasattr(pipeline, "predict_proba"):
        scores = pipeline.predict_proba(texts)
    else:
        raw = pipeline.decision_function(texts)
        if raw.ndim == 1:  # binary: one margin for the positive class
            raw = np.stack([-raw, raw], axis=1)
        exp = np.exp(raw - raw.max(axis=1, keepdims=True))
        scores = exp / exp.sum(axis=1, keepdims=True)
    classes = pipeline.classes_
    best = scores.argmax(axis=1)
    return classes[best], scores[np.arange(len(texts)), best]


@dataclass
class CrossValidation:
    name: str
    accuracy: list[float]
    macro_f1: list[float]
    fit_seconds: list[float]
    predict_ms_per_text: list[float]
    oof_predicted: list[str]  # the out-of-fold prediction of every example, in dataset order
    oof_confidence: list[float]

    def summary(self) -> dict[str, float]:
        def mean_std(values: list[float]) -> tuple[float, float]:
            return float(np.mean(values)), float(np.std(values))

        acc, acc_std = mean_std(self.accuracy)
        f1, f1_std = mean_std(self.macro_f1)
        return {
            "accuracy_mean": round(acc, 4),
            "accuracy_std": round(acc_std, 4),
            "macro_f1_mean": round(f1, 4),
            "macro_f1_std": round(f1_std, 4),
            "fit_seconds_mean": round(float(np.mean(self.fit_seconds)), 3),
            "predict_ms_per_text": round(float(np.mean(self.predict_ms_per_text)), 4),
        }


def cross_validate(
    data: LabeledTexts, name: str, features: str = "words", folds: int = 5, seed: int = 0
) -> CrossValidation:
    """Stratified k-fold cross-validation of one candidate on `data`."""
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold

    smallest = min(data.counts().values())
    if folds < 2 or smallest < folds:
        raise DatasetError(
            f"{folds}-fold cross-validation needs at least {folds} examples per class; "
            f"{data.name}'s smallest class has {smallest}"
        )
    texts = np.array(data.texts, dtype=object)
    labels = np.array(data.labels, dtype=object)
    result = CrossValidation(name, [], [], [], [], [""] * len(texts), [0.0] * len(texts))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train_idx, test_idx in splitter.split(texts, labels):
        pipeline = build_pipeline(name, features, seed)
        start = time.perf_counter()
        pipeline.fit(list(texts[train_idx]), list(labels[train_idx]))
        result.fit_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        predicted, conf = confidence(pipeline, list(texts[test_idx]))
        result.predict_ms_per_text.append((time.perf_counter() - start) * 1000 / len(test_idx))
        result.accuracy.append(float(accuracy_score(labels[test_idx], predicted)))
        result.macro_f1.append(float(f1_score(labels[test_idx], predicted, average="macro")))
        for i, p, c in zip(test_idx, predicted, conf, strict=True):
            result.oof_predicted[i], result.oof_confidence[i] = str(p), float(c)
    return result


def compact(pipeline: Pipeline) -> Pipeline:
    """Store each fitted vectorizer's vocabulary with plain ints (skops writes every numpy int as its own
    file: about 5x smaller model files). Predictions are unchanged."""
    from sklearn.pipeline import FeatureUnion

    vectorizer = pipeline.named_steps["tfidf"]
    parts = (
        [v for _, v in vectorizer.transformer_list] if isinstance(vectorizer, FeatureUnion) else [vectorizer]
    )
    for part in parts:
        part.vocabulary_ = {term: int(index) for term, index in part.vocabulary_.items()}
    return pipeline
