"""Day 31: the classifier's HTTP endpoint with FastAPI.

Write `create_app(classify)`: a FastAPI app with `POST /classify` taking {"text": "..."} and answering
{"label": ..., "confidence": ...} from `classify(text) -> (label, confidence)`. A missing text, or one
that is empty or longer than 2,000 characters, is the client's mistake: 422, and `classify` is not called.
"""

from fastapi import FastAPI
from pydantic import BaseModel


class ClassifyRequest(BaseModel):
    text: str  # TODO: 1 to 2,000 characters (pydantic's Field)


class ClassifyResponse(BaseModel):
    label: str
    confidence: float


def create_app(classify) -> FastAPI:
    app = FastAPI()

    # TODO: the POST /classify route, with ClassifyRequest in and ClassifyResponse out
    raise NotImplementedError("the route")
    return app
