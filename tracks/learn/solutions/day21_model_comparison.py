"""Day 21: model comparison by stratified cross-validation (reference: tracks/classify/pipelines.py
`cross_validate`)."""

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC


def scores(y_true, y_pred) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
    }


def compare(texts, labels, candidates, folds: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    texts, labels = np.array(texts, dtype=object), np.array(labels, dtype=object)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    results = {}
    for name, build in candidates.items():
        per_fold = []
        for train, test in splitter.split(texts, labels):
            model = build().fit(list(texts[train]), list(labels[train]))
            per_fold.append(scores(list(labels[test]), model.predict(list(texts[test]))))
        results[name] = {key: float(np.mean([s[key] for s in per_fold])) for key in per_fold[0]}
    return results


def candidates() -> dict:
    return {
        "logreg": lambda: make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000)),
        "linear_svc": lambda: make_pipeline(TfidfVectorizer(), LinearSVC()),
        "random_forest": lambda: make_pipeline(TfidfVectorizer(), RandomForestClassifier(n_estimators=50)),
    }
