"""Day 34: the learner's endpoint test, run against a correct app and against broken ones (mutants).

No `from __future__ import annotations` here: FastAPI reads the route's annotations at runtime.
"""

import traceback
from types import ModuleType

from tracks.learn.core import Exercise, Failure

# what each broken app gets wrong, and the assertion that catches it
MUTANTS = {
    "accepts_empty": ("answers 200 to an empty text", "assert that {'text': ''} gets 422"),
    "accepts_missing": ("answers 200 to a body without text", "assert that {} gets 422"),
    "always_benign": ("labels every text 'benign'", "post an injection ('…ignore…') and assert its label"),
    "no_confidence": ("drops the confidence", "assert the whole body, confidence included"),
}


def build_app(mutant: str | None = None):
    from fastapi import FastAPI, HTTPException, Request

    app = FastAPI()

    @app.post("/classify")
    async def classify(request: Request) -> dict:
        body = await request.json()
        text = body.get("text") if isinstance(body, dict) else None
        if (text is None and mutant != "accepts_missing") or (text == "" and mutant != "accepts_empty"):
            raise HTTPException(422, "text: 1 to 2,000 characters")
        text = text or ""
        label, confidence = ("injection", 0.9) if "ignore" in text.lower() else ("benign", 0.8)
        if mutant == "always_benign":
            label, confidence = "benign", 0.8
        return {"label": label} if mutant == "no_confidence" else {"label": label, "confidence": confidence}

    return app


def run(module: ModuleType, mutant: str | None) -> BaseException | None:
    from fastapi.testclient import TestClient

    with TestClient(build_app(mutant)) as client:
        try:
            module.test_classify_endpoint(client)
        except NotImplementedError:
            raise
        except Exception as e:
            return e
    return None


def check(module: ModuleType) -> None:
    error = run(module, None)
    if error is not None:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == module.__file__]
        where = f" at line {frames[-1].lineno}: `{(frames[-1].line or '').strip()}`" if frames else ""
        raise Failure(
            "your test fails on a correct app",
            "an app that follows the day-31 contract",
            "no failure",
            f"{type(error).__name__}{where} {error}"[:240],
            "compare that assertion with the contract above",
        )
    for mutant, (bug, hint) in MUTANTS.items():
        if run(module, mutant) is None:
            raise Failure(
                "your test passes on a broken app", f"an app that {bug}", "your test fails", "it passed", hint
            )


HINTS = (
    "A test is only as good as the bugs it catches: for each part of the contract, one assertion.",
    "Assert the whole JSON body (not only the status), one injection example, and 422 for '' and {}.",
    "assert r.json() == {'label': 'benign', 'confidence': 0.8}; the same for 'ignore …' → injection; "
    "assert client.post('/classify', json={'text': ''}).status_code == 422; and json={} → 422.",
)
EXERCISE = Exercise(
    34,
    "testing_endpoint",
    "the endpoint's test",
    "production",
    HINTS,
    ("tests/app/test_classify.py: the service's own tests of POST /v1/classify",),
    check,
)
