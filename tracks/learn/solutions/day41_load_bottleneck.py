"""Day 41: a blocking call off the event loop (reference: app/scheduler.py runs the engine in its own
thread; docs/serving.md)."""

from fastapi import FastAPI


def create_app(work) -> FastAPI:
    app = FastAPI()

    @app.get("/lookup")
    def lookup() -> dict:  # a plain def: FastAPI runs it in its thread pool, off the event loop
        return {"result": work()}

    return app
