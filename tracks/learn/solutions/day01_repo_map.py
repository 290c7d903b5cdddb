"""Day 1: where each fact lives (reference: README.md's Layout and STYLE.md's one source of truth)."""

WHERE = {
    "every request limit": "app/validation.py",
    "the error shape of every HTTP error": "app/errors.py",
    "the service's settings from env vars": "app/config.py",
    "the metric names": "app/observability/catalog.py",
    "the SLO thresholds the alerts and the release gate use": "loadtest/slo.yaml",
}
ALLOWED = {("app", "nanochat"), ("tracks", "nanochat"), ("infra", "modules")}


def may_import(importer: str, imported: str) -> bool:
    return importer == imported or (importer, imported) in ALLOWED
