"""Day 20: a scikit-learn baseline for the guardrail (prompt injection vs benign).

Write `build_baseline()`: an unfitted scikit-learn Pipeline that turns raw texts into TF-IDF features and
classifies them with logistic regression. The check fits it on 75% of tracks/classify/data/guardrail.jsonl
(stratified) and needs a macro-F1 of at least 0.85 on the held-out 25%.
"""

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline


def build_baseline() -> Pipeline:
    # TODO: a vectorizer step before the model (texts are strings, the model wants numbers)
    return Pipeline([("model", LogisticRegression(max_iter=1000))])
