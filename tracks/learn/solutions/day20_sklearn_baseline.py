"""Day 20: a scikit-learn baseline (reference: tracks/classify/pipelines.py `build_pipeline("logreg")`)."""

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline


def build_baseline() -> Pipeline:
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
    model = LogisticRegression(C=5.0, max_iter=1000, class_weight="balanced")
    return Pipeline([("tfidf", vectorizer), ("model", model)])
