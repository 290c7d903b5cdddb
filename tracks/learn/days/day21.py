"""Day 21: the cross-validation loop, watched by a spy model that records what it is fitted on."""

from __future__ import annotations

from collections import Counter
from types import ModuleType
from typing import ClassVar

from tracks.learn.core import Exercise, Failure

NAMES = ("logreg", "linear_svc", "random_forest")


class Spy:
    """Predicts the majority label of its training texts; records every fit and predict."""

    log: ClassVar[list[dict]] = []

    def fit(self, texts, labels):
        self.train = list(texts)
        self.majority = Counter(labels).most_common(1)[0][0]
        return self

    def predict(self, texts):
        texts = list(texts)
        Spy.log.append({"train": self.train, "test": texts})
        return [self.majority] * len(texts)


def check(module: ModuleType) -> None:
    y_true = ["a"] * 8 + ["b"] * 2
    y_pred = ["a"] * 8 + ["a", "b"]
    given = "scores(y_true = 8×'a' + 2×'b', y_pred = 9×'a' + 1×'b')"
    got = module.scores(y_true, y_pred)
    want = {"accuracy": 0.9, "macro_f1": (16 / 17 + 2 / 3) / 2}
    for key, value in want.items():
        if key not in got or abs(float(got[key]) - value) > 1e-6:
            hint = "f1_score(y_true, y_pred, average='macro')"
            if key == "macro_f1" and key in got and abs(float(got[key]) - 0.9) < 1e-6:
                hint = "that is micro-F1 (= accuracy here): average='macro' weighs the rare class equally"
            elif (
                key == "macro_f1"
                and key in got
                and abs(float(got[key]) - (0.8 * 16 / 17 + 0.2 * 2 / 3)) < 1e-6
            ):
                hint = "that is the weighted F1: average='macro' does not weight classes by their size"
            raise Failure(f"`{key}` is wrong", given, f"{value:.4f}", str(got.get(key)), hint)

    texts = [f"text {i}" for i in range(30)]
    labels = ["x"] * 20 + ["y"] * 10  # sorted by class, as files often are
    truth = dict(zip(texts, labels, strict=True))
    Spy.log = []
    given = "30 texts sorted by class (20 'x', 10 'y'), folds=5, a spy model"
    result = module.compare(texts, labels, {"spy": Spy}, folds=5, seed=0)
    if len(Spy.log) != 5:
        raise Failure(
            "not one fit and predict per fold",
            given,
            "5 predictions",
            str(len(Spy.log)),
            "loop over splitter.split(texts, labels): one fresh model per fold",
        )
    for i, fold in enumerate(Spy.log):
        seen = sorted(set(fold["train"]) & set(fold["test"]))
        if seen:
            raise Failure(
                f"fold {i + 1} is scored on texts it was trained on",
                given,
                "a held-out test part",
                f"{len(seen)} of its {len(fold['test'])} test texts in training",
                "fit on texts[train] only, never on all texts",
            )
        classes = Counter(truth[t] for t in fold["test"])
        if classes != Counter({"x": 4, "y": 2}):
            raise Failure(
                f"fold {i + 1} is not stratified",
                given,
                "4 'x' and 2 'y' in every test fold",
                f"{dict(classes)}",
                "StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)",
            )
    folds = [_scores([truth[t] for t in f["test"]], ["x"] * len(f["test"])) for f in Spy.log]
    want = {key: sum(s[key] for s in folds) / len(folds) for key in ("accuracy", "macro_f1")}
    got = result.get("spy", {})
    for key, value in want.items():
        if key not in got or abs(float(got[key]) - value) > 1e-6:
            raise Failure(
                f"the reported {key} is not the mean over the folds",
                given,
                f"{value:.4f}",
                str(got.get(key)),
                "score each fold with `scores`, then average each key",
            )

    built = module.candidates()
    missing = [n for n in NAMES if n not in built]
    if missing:
        raise Failure(
            "candidates are missing",
            "candidates()",
            ", ".join(NAMES),
            ", ".join(built),
            "add LinearSVC and RandomForestClassifier pipelines, TF-IDF first",
        )
    for name in NAMES:
        model = built[name]()
        if not hasattr(model, "fit") or hasattr(model, "classes_"):
            raise Failure(
                f"candidates()[{name!r}]() is not a fresh estimator",
                "candidates()",
                "an unfitted pipeline",
                type(model).__name__,
                "a lambda that builds a new pipeline",
            )


def _scores(y_true, y_pred):
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": accuracy_score(y_true, y_pred), "macro_f1": f1_score(y_true, y_pred, average="macro")}


HINTS = (
    "Three parts: the two metrics, the fold loop (fit on train indices, score test indices), the models.",
    "for train, test in splitter.split(texts, labels): model = build().fit(list(texts[train]), "
    "list(labels[train])); then scores(list(labels[test]), model.predict(list(texts[test]))).",
    "macro_f1 = f1_score(y_true, y_pred, average='macro'); the result per name is the mean of each key "
    "over the folds.",
)
EXERCISE = Exercise(
    21,
    "model_comparison",
    "LR vs SVM vs random forest",
    "intermediate",
    HINTS,
    ("tracks/classify/pipelines.py: cross_validate (tests/tracks/classify/test_pipelines.py)",),
    check,
)
