"""Day 41: the bottleneck a load test finds.

Under a load test, `GET /lookup` serves one request at a time: p95 latency grows with every extra user
while the CPU idles. `work()` is a blocking call (a database or a model behind a lock-free client) that
takes a while. Find why the requests queue, and fix `create_app` so that concurrent requests overlap,
still returning {"result": work()}.
"""

from fastapi import FastAPI


def create_app(work) -> FastAPI:
    app = FastAPI()

    @app.get("/lookup")
    async def lookup() -> dict:
        # TODO: this handler serves one request at a time under load; why, and what is the fix?
        return {"result": work()}

    return app
