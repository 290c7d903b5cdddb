"""Day 41: concurrent requests to the learner's app; `work()` records where and how many run at once.

No timing is measured: each call to `work()` waits (up to WAIT_S) for the others to arrive, and
records whether it ran on the event loop's thread and the most calls in flight together.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

from tracks.learn.core import Exercise, Failure

REQUESTS = 3
# How long a call waits for the others. A correct app never waits it out, whatever the machine's load (the
# other calls only need to start); a serializing one waits it out once: after that no call waits.
WAIT_S = 10.0


class Work:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.in_flight = self.most = self.calls = 0
        self.on_loop = False
        self.gave_up = False  # a wait timed out: the calls are serialized, later ones need not wait

    def __call__(self) -> int:
        try:
            asyncio.get_running_loop()
            self.on_loop = True  # called from a coroutine: the whole server waits for us
        except RuntimeError:
            pass
        with self.arrived:
            self.calls += 1
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.arrived.notify_all()
            waits = not self.on_loop and not self.gave_up
            if waits and not self.arrived.wait_for(lambda: self.most >= REQUESTS, timeout=WAIT_S):
                self.gave_up = True
            self.in_flight -= 1
            return 42


def check(module: ModuleType) -> None:
    from fastapi.testclient import TestClient

    work = Work()
    given = f"{REQUESTS} concurrent GET /lookup on one server"
    with TestClient(module.create_app(work)) as client, ThreadPoolExecutor(REQUESTS) as pool:
        responses = list(pool.map(lambda _: client.get("/lookup"), range(REQUESTS)))
    bad = [r for r in responses if r.status_code != 200 or r.json() != {"result": 42}]
    if bad:
        raise Failure(
            "GET /lookup does not answer {'result': work()}",
            given,
            "200 {'result': 42}",
            f"{bad[0].status_code} {bad[0].text[:100]}",
            "keep the route and its answer; fix only how it runs",
        )
    if work.on_loop:
        raise Failure(
            "the blocking work() runs on the event loop",
            given,
            "work() in a worker thread",
            "called inside `async def`: every other request waits",
            "make the handler a plain `def` (FastAPI runs it in a thread pool), or "
            "`await run_in_threadpool(work)`",
        )
    if work.most < REQUESTS:
        raise Failure(
            "requests are still served one at a time",
            given,
            f"{REQUESTS} calls of work() in flight together",
            f"at most {work.most}",
            "something serializes them: a lock around work(), or a single worker",
        )


HINTS = (
    "Ask which thread runs the handler: an `async def` runs on the event loop, the one thread serving all.",
    "A blocking call inside `async def` stops every other request; FastAPI runs plain `def` handlers in "
    "a thread pool.",
    "Change `async def lookup()` to `def lookup()` "
    "(or `await starlette.concurrency.run_in_threadpool(work)`).",
)
EXERCISE = Exercise(
    41,
    "load_bottleneck",
    "a load-test bottleneck",
    "production",
    HINTS,
    ("app/scheduler.py: the engine on its own thread, never the event loop (docs/serving.md)",),
    check,
)
