"""`POST /v1/classify`: label texts with a scikit-learn classifier from the model registry (docs/classify.md).

The classifier is the registry folder NANOCHAT_CLASSIFIER (default `models/fortunes`, its latest version;
`models/fortunes/v1` pins one). It is loaded, and used, only in the route's own worker processes
(NANOCHAT_CLASSIFY_WORKERS, at a lower CPU priority, each loading the same version folder once:
app/pool_worker.py), never in the server's process, whose GIL the event loop and the scheduler need. At
start-up the server starts them in the background (`Classifier.load`): `/ready` does not wait for them, and
until the classifier is ready (its state in `/stats`, `parts.classifier`) the route answers 503 `loading`
with Retry-After. The registry checks the file's SHA-256 and the types it holds before anything is
deserialized. A classifier that fails to load (missing, changed, not probabilistic) is logged in one line
and the route answers 503 `load_failed` with the reason; chat is not affected. An empty
NANOCHAT_CLASSIFIER turns the route off (404). At most NANOCHAT_CLASSIFY_QUEUE requests wait for a worker,
and past that the route answers 429 `queue_full` with Retry-After at once (app/admission.py), so a flood
of classification cannot slow chat or the probes. A worker process that dies running a request makes it a
503 `worker_crashed`; the next request gets a new one.

Request `{"input": "text" | ["text", ...], "model"?: "fortunes" | "fortunes/v1"}`; reply
`{"object": "list", "model": "fortunes/v1", "data": [{"index", "label", "score", "scores"}], "usage"}`,
`scores` holding every class's probability. Limits (NANOCHAT_CLASSIFY_MAX_INPUTS texts,
NANOCHAT_CLASSIFY_MAX_CHARS characters each, no empty text) are 400s in the service's error shape.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request

from app import pool_worker
from app.admission import CLASSIFY, Admission
from app.api.deps import RuntimeDep
from app.config import Settings, model_folder
from app.errors import CLASSIFY_ERRORS, APIError, ErrorResponse, classifier_unavailable
from app.lifecycle import PartState
from app.schemas import Classification, ClassifyRequest, ClassifyResponse, ClassifyUsage
from app.validation import classify_texts

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["classify"])
EXAMPLES = {
    "one text": {
        "summary": "one text",
        "value": {"input": "The compiler crashed again."},
    },
    "several texts": {
        "summary": "several texts, one model version",
        "value": {"input": ["Vote early, vote often.", "E = mc^2, give or take."], "model": "fortunes/v1"},
    },
}
BUSY = {
    429: {
        "model": ErrorResponse,
        "description": "NANOCHAT_CLASSIFY_QUEUE requests wait already; retry after Retry-After seconds",
    }
}


@dataclass
class Classifier:
    """The served classifier, as the server knows it (its model lives in the worker processes), and where
    its loading stands."""

    path: str
    state: PartState = PartState.LOADING
    reason: str = "the classifier is loading (its worker process is starting)"
    name: str = ""  # name/version, e.g. fortunes/v1
    directory: str = ""  # the version folder loaded (absolute): what every worker process loads
    classes: list[str] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Settings) -> Classifier:
        if not settings.classifier.strip():
            reason = "classification is turned off on this server (NANOCHAT_CLASSIFIER is empty)"
            return cls("", PartState.OFF, reason)
        return cls(settings.classifier)

    async def load(self, pool: Admission) -> None:
        """Load it in `pool`'s worker processes, starting them (in the background, at start-up: the first
        request then finds them ready); the outcome is recorded, never raised."""
        started, folder = time.monotonic(), str(model_folder(self.path).resolve())
        try:
            described = await pool.warm(pool_worker.describe_classifier, folder)
        except Exception as e:
            self.state = PartState.FAILED
            self.reason = f"the classifier failed to load from {self.path}: {e}"
            logger.error(
                "%s; POST /v1/classify answers 503 (chat is not affected)",
                self.reason,
                exc_info=not isinstance(e, ValueError | OSError),  # a bad folder or file: its message says it
            )
            return
        self.name, self.directory, self.classes = (described[k] for k in ("name", "directory", "classes"))
        self.state, self.reason = PartState.READY, ""
        logger.info(
            "classifier %s ready in %.1f s (in its worker process): %d classes",
            self.name,
            time.monotonic() - started,
            len(self.classes),
        )

    def status(self) -> dict[str, str | None]:
        """Its state, as `/stats` reports it in `parts`."""
        return {"state": self.state, "reason": self.reason or None, "model": self.name or None}

    @property
    def loading(self) -> bool:
        return self.state == PartState.LOADING

    def check_ready(self) -> None:
        error = classifier_unavailable(self.state, self.reason)
        if error is not None:
            raise error

    def check_model(self, model: str | None) -> None:
        """`model` must name the classifier served: its name, or name/version."""
        if model is not None and model not in (self.name, self.name.split("/")[0]):
            message = f"classifier {model!r} not found; this server serves {self.name!r}"
            raise APIError(404, message, "model_not_found", "model")

    def predict(self, texts: list[str]) -> list[Classification]:
        """In this process, loading the model here (the route runs `pool_worker.classify` in its worker
        processes instead; this is for comparing with them)."""
        return self.results(pool_worker.classify(self.directory, texts))

    def results(self, probabilities: list[list[float]]) -> list[Classification]:
        """Each text's row of class probabilities as its label, score and scores."""
        results = []
        for i, row in enumerate(probabilities):
            scores = {label: float(p) for label, p in zip(self.classes, row, strict=True)}
            label = max(scores, key=scores.__getitem__)
            results.append(Classification(index=i, label=label, score=scores[label], scores=scores))
        return results


async def classifier(request: Request) -> Classifier:
    """FastAPI dependency: the app's Classifier."""
    served = request.app.state.runtime.classifier
    assert served is not None  # create_app gives every Runtime one
    return served


ClassifierDep = Annotated[Classifier, Depends(classifier)]


@router.post("/classify", response_model=ClassifyResponse, responses={**CLASSIFY_ERRORS, **BUSY})
async def classify(
    body: Annotated[ClassifyRequest, Body(openapi_examples=EXAMPLES)],
    request: Request,
    rt: RuntimeDep,
    served: ClassifierDep,
) -> ClassifyResponse:
    """Label each text with the most probable class, and every class's probability."""
    if rt.stopping:
        raise rt.not_ready_error()
    served.check_ready()
    served.check_model(body.model)
    texts = classify_texts(body.input, rt.settings)
    rows = await rt.admission[CLASSIFY].run(pool_worker.classify, served.directory, texts)
    data = served.results(rows)
    usage = ClassifyUsage(inputs=len(texts), characters=sum(len(t) for t in texts))
    return ClassifyResponse(model=served.name, data=data, usage=usage)
