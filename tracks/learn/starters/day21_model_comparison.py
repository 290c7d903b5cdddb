"""Day 21: compare logistic regression, a linear SVM and a random forest by cross-validation.

1. `scores(y_true, y_pred)`: {"accuracy": ..., "macro_f1": ...}, macro-F1 being the unweighted mean of
   the per-class F1 (every class counts the same, however rare).
2. `compare(texts, labels, candidates, folds=5, seed=0)`: `candidates` maps a name to a function that
   builds a fresh unfitted pipeline. For each, stratified k-fold cross-validation (shuffled, seeded): fit
   on k-1 folds, predict the held-out fold; return {name: mean of `scores` over the folds}.
3. `candidates()`: {"logreg": ..., "linear_svc": ..., "random_forest": ...}, TF-IDF before each model.
"""

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC


def scores(y_true, y_pred) -> dict[str, float]:
    # TODO: accuracy and macro-F1
    raise NotImplementedError("accuracy and macro-F1")


def compare(texts, labels, candidates, folds: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    texts, labels = np.array(texts, dtype=object), np.array(labels, dtype=object)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # TODO: for each candidate, fit on each fold's train part and score its test part; average the folds
    raise NotImplementedError("the cross-validation loop")


def candidates() -> dict:
    return {
        "logreg": lambda: make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000)),
        # TODO: "linear_svc" and "random_forest"
    }
