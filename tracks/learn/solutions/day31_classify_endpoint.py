"""Day 31: a classifier endpoint (reference: app/api/classify.py `POST /v1/classify`, app/validation.py)."""

from fastapi import FastAPI
from pydantic import BaseModel, Field


class ClassifyRequest(BaseModel):
    text: str = Field(min_length=1, max_length=2000)


class ClassifyResponse(BaseModel):
    label: str
    confidence: float


def create_app(classify) -> FastAPI:
    app = FastAPI()

    @app.post("/classify", response_model=ClassifyResponse)
    def classify_text(request: ClassifyRequest) -> ClassifyResponse:
        label, confidence = classify(request.text)
        return ClassifyResponse(label=label, confidence=confidence)

    return app
