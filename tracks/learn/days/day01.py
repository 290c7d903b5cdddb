"""Day 1: the map of the repository: which file owns which fact, and which folder may import which."""

from __future__ import annotations

from types import ModuleType

from tracks.learn.core import Exercise, Failure

ANSWERS = {
    "every request limit": ("app/validation.py", "the row of app/: `validation.py` (every request limit)"),
    "the error shape of every HTTP error": (
        "app/errors.py",
        "the row of app/: `errors.py` (the one error shape)",
    ),
    "the service's settings from env vars": ("app/config.py", "the row of app/: `config.py` (settings)"),
    "the metric names": (
        "app/observability/catalog.py",
        "alerts and dashboards are built from the metric catalog",
    ),
    "the SLO thresholds the alerts and the release gate use": ("loadtest/slo.yaml", "the row of loadtest/"),
}
FOLDERS = ("nanochat", "app", "tracks", "infra", "modules")
ALLOWED = {("app", "nanochat"), ("tracks", "nanochat"), ("infra", "modules")}


def check(module: ModuleType) -> None:
    where = getattr(module, "WHERE", {})
    for fact, (path, hint) in ANSWERS.items():
        got = str(where.get(fact, "")).strip().removeprefix("./")
        if got in ("", "TODO"):
            raise Failure(
                f"a TODO is not written yet: where does {fact!r} live?",
                "WHERE",
                "a file path",
                repr(where.get(fact)),
                "README.md's Layout table: " + hint,
            )
        if got != path:
            raise Failure(
                f"the home of {fact!r} is wrong", "WHERE", path, got, "README.md's Layout table: " + hint
            )
    for importer in FOLDERS:
        for imported in FOLDERS:
            want = importer == imported or (importer, imported) in ALLOWED
            got = module.may_import(importer, imported)
            if bool(got) != want:
                hint = "each part only looks down: app → nanochat, tracks → nanochat, infra → modules"
                if importer == "nanochat" and want is False:
                    hint = "the engine imports nothing of the service, the tracks or infra (README's Layout)"
                raise Failure(
                    "the import rule is wrong",
                    f"may_import({importer!r}, {imported!r})",
                    str(want),
                    repr(got),
                    hint,
                )


HINTS = (
    "Open README.md at `## Layout`: the table says what each file holds.",
    "Request limits and the error shape are in app/; the metric names in app/observability/; the SLOs beside "
    "the load test.",
    "Only three arrows cross folders: app → nanochat, tracks → nanochat, infra → modules; a folder may "
    "always import itself.",
)
EXERCISE = Exercise(
    1,
    "repo_map",
    "where each fact lives",
    "beginner",
    HINTS,
    ("README.md: Layout (tests/test_layout.py checks the import rule)",),
    check,
)
