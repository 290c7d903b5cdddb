"""Day 20: a TF-IDF + logistic-regression baseline, scored on a held-out split of the guardrail set."""

from __future__ import annotations

from types import ModuleType

from tracks.learn.core import Exercise, Failure

MIN_MACRO_F1 = 0.85


def guardrail_split():
    from tracks.classify.dataset import load_guardrail_data, stratified_split

    return stratified_split(load_guardrail_data(), test_fraction=0.25, seed=0)


def check(module: ModuleType) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.metrics import f1_score

    train, test = guardrail_split()
    given = (
        f"guardrail.jsonl, stratified 75/25 (seed 0): {len(train.texts)} train, {len(test.texts)} held out"
    )
    pipeline = module.build_baseline()
    if not hasattr(pipeline, "fit") or not hasattr(pipeline, "predict"):
        raise Failure(
            "build_baseline() does not return an estimator",
            given,
            "a sklearn Pipeline",
            type(pipeline).__name__,
            "return Pipeline([(name, vectorizer), (name, model)])",
        )
    try:
        pipeline.predict(test.texts[:1])
    except (NotFittedError, AttributeError, ValueError, TypeError):
        pass
    else:
        raise Failure(
            "the pipeline comes back already fitted",
            given,
            "an unfitted pipeline",
            "one that predicts before fit",
            "build it only; the caller fits it on its own split",
        )
    try:
        pipeline.fit(train.texts, train.labels)
    except ValueError as e:
        if "float" in str(e) or "string" in str(e):
            raise Failure(
                "fit fails on raw texts",
                given,
                "a model fitted on text",
                f"ValueError: {e}"[:160],
                "the model wants numbers: put TfidfVectorizer() before LogisticRegression",
            ) from None
        raise
    predicted = list(pipeline.predict(test.texts))
    if len(set(predicted)) == 1:
        raise Failure(
            "the model predicts the same label for every text",
            given,
            "both labels predicted",
            f"always {predicted[0]!r}",
            "use a real classifier (LogisticRegression), not a constant baseline",
        )
    f1 = f1_score(test.labels, predicted, average="macro")
    if f1 < MIN_MACRO_F1:
        raise Failure(
            "the baseline is too weak on held-out data",
            given,
            f"macro-F1 ≥ {MIN_MACRO_F1}",
            f"{f1:.3f}",
            "TF-IDF on words (and word pairs) with sublinear_tf; keep the vocabulary "
            "large enough; LogisticRegression with max_iter high enough to converge",
        )


HINTS = (
    "A Pipeline is a list of (name, step) pairs: the last is the model, the ones before transform.",
    "TfidfVectorizer turns a list of strings into a sparse matrix; put it first.",
    "Pipeline([('tfidf', TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))), "
    "('model', LogisticRegression(max_iter=1000))]).",
)
EXERCISE = Exercise(
    20,
    "sklearn_baseline",
    "a scikit-learn baseline",
    "intermediate",
    HINTS,
    ("tracks/classify/pipelines.py: build_pipeline('logreg') (tests/tracks/classify/test_pipelines.py)",),
    check,
)
