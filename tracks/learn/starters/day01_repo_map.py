"""Day 1: know where each fact lives.

Every fact in this repository has one home that the rest reads (STYLE.md: one source of truth). Fill
`WHERE` with the file (path from the repository root) that owns each fact; README.md's Layout table and
docs/serving.md say. Then write `may_import(importer, imported)` for the top folders "app", "nanochat",
"tracks", "infra", "modules": True when the Layout's rule "each part only looks down" allows it.
"""

WHERE = {
    "every request limit": "TODO",
    "the error shape of every HTTP error": "TODO",
    "the service's settings from env vars": "TODO",
    "the metric names": "TODO",
    "the SLO thresholds the alerts and the release gate use": "TODO",
}


def may_import(importer: str, imported: str) -> bool:
    # TODO: app → nanochat, tracks → nanochat, infra → modules; nothing else across folders
    raise NotImplementedError("the import rule")
