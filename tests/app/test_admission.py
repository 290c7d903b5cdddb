"""Bounded admission of the CPU-heavy side routes (app/admission.py): the pool, of threads
or of processes, never runs more than its workers at once, turns away what does not fit with 429 +
Retry-After in the service's error shape, frees the slot of a caller that went away; a process pool gives
the in-process classifier's results, leaves no process behind, and turns a worker that died into a 503
and a new pool. On real servers: a flood of `POST /v1/classify` gets 429s while `/health` and a chat keep
being answered, a killed worker is replaced, and neither SIGTERM to gunicorn nor SIGKILL to `python -m app`
leaves a worker process behind. Behaviour only: no test here reads a clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import admission_jobs
import httpx
import pytest
from admission_jobs import Gate
from prometheus_client.parser import text_string_to_metric_families

from app import pool_worker
from app.admission import NICE, Admission
from app.api.classify import Classifier
from app.errors import APIError
from nanochat.data.corpora import CorpusError
from tests.servers import Gunicorn, Server, wait_for_part
from tracks.classify.dataset import DatasetError, load_fortunes, stratified_split

WAIT_S = admission_jobs.WAIT_S
CHAT = {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, "temperature": 0}
REPO_ROOT = Path(__file__).resolve().parents[2]
FORTUNES = REPO_ROOT / "models" / "fortunes" / "v1"
GUNICORN = Path(sys.executable).parent / "gunicorn"
KINDS = ["thread", "process"]


def gated(kind: str, workers: int, queue: int) -> tuple[Admission, Gate]:
    gate = Gate()
    pool = Admission(
        "test",
        workers,
        queue,
        kind=kind,
        initializer=admission_jobs.install,
        initargs=(gate,),
        record_metrics=False,
    )
    return pool, gate


@pytest.mark.parametrize("kind", KINDS)
def test_runs_at_most_workers_at_once_and_rejects_past_the_queue(kind: str) -> None:
    async def scenario() -> None:
        pool, gate = gated(kind, workers=2, queue=3)
        calls = [asyncio.ensure_future(pool.run(admission_jobs.job, i)) for i in range(9)]
        await asyncio.sleep(0)  # every call has been offered: 5 admitted, 4 turned away at once
        rejected = [c for c in calls if c.done()]
        assert len(rejected) == 4 and pool.in_flight == 5
        for call in rejected:
            error = call.exception()
            assert isinstance(error, APIError) and error.status == 429 and error.code == "queue_full"
            assert error.retry_after and "test queue is full" in error.message
        for _ in range(2):  # two jobs run; the other three wait for a worker
            assert await asyncio.to_thread(gate.started.acquire, timeout=WAIT_S)
        assert gate.running.value == 2
        gate.open.set()
        results = await asyncio.wait_for(asyncio.gather(*(c for c in calls if c not in rejected)), WAIT_S)
        assert sorted(results) == [i for i in range(9) if calls[i] not in rejected]
        assert gate.most.value == 2 and gate.done.value == 5 and pool.in_flight == 0
        pool.shutdown()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", KINDS)
def test_a_caller_that_goes_away_frees_its_slot(kind: str) -> None:
    async def scenario() -> None:
        pool, gate = gated(kind, workers=1, queue=1)
        running = asyncio.ensure_future(pool.run(admission_jobs.job, 0))
        waiting = asyncio.ensure_future(pool.run(admission_jobs.job, 1))
        assert await asyncio.to_thread(gate.started.acquire, timeout=WAIT_S)
        with pytest.raises(APIError):
            await pool.run(admission_jobs.job, 2)  # full
        waiting.cancel()  # its client went away while it waited: dropped, slot free
        await asyncio.gather(waiting, return_exceptions=True)
        assert pool.in_flight == 1
        again = asyncio.ensure_future(pool.run(admission_jobs.job, 3))
        gate.open.set()
        assert await asyncio.wait_for(asyncio.gather(running, again), WAIT_S) == [0, 3]
        assert gate.done.value == 2 and pool.in_flight == 0  # the cancelled job never ran
        pool.shutdown()

    asyncio.run(scenario())


# ---- the process pool -------------------------------------------------------------------------------
def fortunes_sample() -> list[str]:
    """The report's worst held-out predictions, and the whole held-out split when the Debian fortunes
    package is cached under build/ (see tests/app/test_classify.py)."""
    report = json.loads((FORTUNES / "report.json").read_text())
    texts = [w["text"] for w in report["test"]["worst_predictions"]]
    try:
        data = load_fortunes(REPO_ROOT / "build" / "classify" / "downloads")
    except (CorpusError, DatasetError):
        return texts
    split = json.loads((FORTUNES / "metadata.json").read_text())["split"]
    return texts + stratified_split(data, split["test_fraction"], split["seed"])[1].texts


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {WAIT_S} s"
        time.sleep(0.05)


def reaped(pid: int) -> bool:
    """Ended and collected by its parent: a process pool has seen its worker go."""
    return not Path(f"/proc/{pid}").exists()


def test_the_process_pool_gives_the_in_process_classifiers_results() -> None:
    """On the held-out fortunes, the worker processes' labels and probabilities are the in-process
    classifier's, bit for bit; the workers run below the server's priority, without torch."""
    served = Classifier(str(FORTUNES))
    texts = fortunes_sample()
    pool = Admission(
        "classify",
        2,
        8,
        kind="process",
        initializer=pool_worker.preload_classifier,
        initargs=(str(FORTUNES),),
        record_metrics=False,
    )

    async def scenario() -> list[list[float]]:
        await served.load(pool)  # as the service does at start-up: in the pool's processes
        assert served.state == "ready", served.reason
        batches = [texts[i : i + 64] for i in range(0, len(texts), 64)]
        jobs = [pool.run(pool_worker.classify, served.directory, batch) for batch in batches[:8]]
        rows = [row for batch in await asyncio.gather(*jobs) for row in batch]
        for batch in batches[8:]:
            rows += await pool.run(pool_worker.classify, served.directory, batch)
        assert await pool.run(os.nice, 0) == os.nice(0) + NICE
        assert not await pool.run(admission_jobs.imported, "torch")
        return rows

    try:
        rows = asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert served.results(rows) == served.predict(texts)


def test_the_pools_processes_are_gone_after_shutdown_and_it_refuses_new_jobs() -> None:
    others = set(pool_threads())  # other tests' pools, ending or not, are not this test's business
    pool, gate = gated("process", workers=2, queue=0)

    async def scenario() -> list[int]:
        jobs = [asyncio.ensure_future(pool.run(admission_jobs.pid)) for _ in range(2)]
        for _ in range(2):  # both running at once: two processes
            assert await asyncio.to_thread(gate.started.acquire, timeout=WAIT_S)
        gate.open.set()
        return await asyncio.gather(*jobs)

    pids = asyncio.run(scenario())
    assert len(set(pids)) == 2 and os.getpid() not in pids and all(running(pid) for pid in pids)
    managers = set(pool_threads()) - others
    assert managers, "a process pool runs a manager thread"
    assert pool.shutdown(WAIT_S) is True  # the default wait (10 s) could run out on a loaded machine
    # Ended and collected by the time shutdown returns, with the pool's own thread: nothing of the pool
    # is left to race the interpreter's exit hook (which wrote to its closed wake-up pipe: EBADF).
    assert all(reaped(pid) for pid in pids) and not any(t.is_alive() for t in managers)
    with pytest.raises(APIError) as refused:
        asyncio.run(pool.run(os.getpid))
    assert refused.value.status == 503 and refused.value.code == "shutting_down"


def test_shutdown_says_when_a_running_job_outlives_its_wait_and_the_job_still_finishes() -> None:
    pool, gate = gated("process", workers=1, queue=0)

    async def scenario() -> int:
        job = asyncio.ensure_future(pool.run(admission_jobs.pid))
        assert await asyncio.to_thread(gate.started.acquire, timeout=WAIT_S)
        assert await asyncio.to_thread(pool.shutdown, 0.05) is False  # the gate is shut: it cannot end
        gate.open.set()
        return await asyncio.wait_for(job, WAIT_S)

    worker = asyncio.run(scenario())
    wait_until(lambda: reaped(worker), "the worker ended after its job")


def pool_threads() -> list[threading.Thread]:
    """The process pools' manager threads alive in this process."""
    return [t for t in threading.enumerate() if type(t).__name__ == "_ExecutorManagerThread"]


def test_a_worker_that_dies_gives_a_503_with_the_reason_and_a_new_pool() -> None:
    async def scenario(pool: Admission) -> None:
        first = await pool.run(os.getpid)
        with pytest.raises(APIError) as crashed:
            await pool.run(admission_jobs.crash)
        error = crashed.value
        assert error.status == 503 and error.code == "worker_crashed" and error.retry_after
        assert "worker process ended while it ran this request" in error.message
        assert pool.in_flight == 0
        wait_until(lambda: reaped(first), "the crashed worker reaped")
        second = await pool.run(os.getpid)  # a new pool
        assert second != first
        os.kill(second, signal.SIGKILL)  # killed while idle: the next job is not failed, just rerouted
        wait_until(lambda: reaped(second), "the killed worker reaped")
        third = await pool.run(os.getpid)
        assert third not in (first, second) and pool.in_flight == 0

    pool = Admission("test", 1, 1, kind="process", record_metrics=False)
    try:
        asyncio.run(scenario(pool))
    finally:
        pool.shutdown()


# ---- a real server ----------------------------------------------------------------------------------
def big_classify_body() -> bytes:
    """64 texts of 10,000 characters: the largest request the default limits allow."""
    words = " ".join(f"word{i % 997} token{i % 131}" for i in range(1200))
    return json.dumps({"input": [words[:10_000]] * 64}).encode()


def admission_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=WAIT_S).text
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "nanochat_admission_requests_total" and sample.labels["pool"] == "classify"
    }


@pytest.mark.integration
def test_a_classify_flood_gets_429s_while_health_and_chat_are_answered(start_server) -> None:
    env = {"NANOCHAT_CLASSIFY_WORKERS": "1", "NANOCHAT_CLASSIFY_QUEUE": "1"}
    server = start_classifying(start_server, env)
    url, body, flooders = server.url, big_classify_body(), 24
    headers = {"content-type": "application/json"}
    start = threading.Barrier(flooders + 1)

    def flood(_: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=WAIT_S) as client:
            start.wait(WAIT_S)
            return client.post("/v1/classify", content=body, headers=headers)

    with ThreadPoolExecutor(flooders) as pool:
        answers = pool.map(flood, range(flooders))
        start.wait(WAIT_S)
        health = httpx.get(f"{url}/health", timeout=WAIT_S)
        chat = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=WAIT_S)
        answers = list(answers)

    assert health.status_code == 200 and chat.status_code == 200, (health.text, chat.text)
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 1, statuses
    busy = [a for a in answers if a.status_code == 429]
    assert busy, "24 classify requests at once, 1 worker and 1 waiting: some must be turned away"
    for answer in busy:
        assert int(answer.headers["Retry-After"]) >= 1
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "queue_full" and error["type"] == "rate_limit_error"
    counts = admission_counts(url)
    assert counts == {"admitted": statuses.count(200), "rejected": len(busy)}
    # after the flood: the pool is free again
    again = httpx.post(f"{url}/v1/classify", json={"input": "The compiler crashed again."}, timeout=WAIT_S)
    assert again.status_code == 200, again.text


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def pool_workers(pid: int) -> list[int]:
    """The spawned worker processes among `pid`'s children (not multiprocessing's resource tracker)."""
    return [child for child in children(pid) if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def classify_once(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", json={"input": "The compiler crashed again."}, timeout=WAIT_S)


def start_classifying(start_server, env: dict[str, str] | None = None) -> Server:
    """A server whose classifier has loaded (it loads after /ready says 200)."""
    server = start_server(env)
    assert wait_for_part(server.url, "classifier", WAIT_S)["state"] == "ready"
    return server


@pytest.mark.integration
def test_classify_runs_in_a_lower_priority_process_that_ignores_group_signals_and_is_replaced_when_killed(
    start_server,
) -> None:
    server = start_classifying(start_server)
    first = classify_once(server.url)
    assert first.status_code == 200, first.text
    (worker,) = pool_workers(server.process.pid)  # NANOCHAT_CLASSIFY_WORKERS=1
    assert niceness(worker) == niceness(server.process.pid) + NICE
    for sig in (signal.SIGTERM, signal.SIGINT):  # as a process group gets them: the server's to handle
        os.kill(worker, sig)
        assert classify_once(server.url).status_code == 200
        assert pool_workers(server.process.pid) == [worker]
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: reaped(worker), "the killed worker reaped")
    again = classify_once(server.url)
    assert again.status_code == 200, again.text
    assert again.json()["data"] == first.json()["data"]
    (replacement,) = pool_workers(server.process.pid)
    assert replacement != worker


@pytest.mark.integration
def test_a_server_killed_with_sigkill_leaves_no_worker_process(start_server) -> None:
    server = start_classifying(start_server)
    assert classify_once(server.url).status_code == 200
    left = descendants(server.process.pid)  # the worker and multiprocessing's resource tracker
    assert pool_workers(server.process.pid) and len(left) >= 2
    server.signal(signal.SIGKILL)
    server.wait(WAIT_S)
    wait_until(lambda: not any(running(pid) for pid in left), "every worker process ended")


@pytest.mark.integration
def test_each_gunicorn_worker_owns_its_pool_and_a_group_sigterm_leaves_no_process(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    server = gunicorn({"NANOCHAT_WORKERS": "2"})  # its own process group, signalled as a whole below
    master, url = server.process, server.url  # killed by the fixture if a check fails

    def ready() -> bool:
        assert master.poll() is None, server.log()
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"{url}/ready", timeout=WAIT_S).status_code == 200
        return False

    wait_until(ready, "ready")
    workers = children(master.pid)
    assert len(workers) == 2

    def both_have_a_pool() -> bool:  # each starts its own at start-up, as its classifier loads
        return all(pool_workers(worker) for worker in workers)

    wait_until(both_have_a_pool, "a classify pool in each gunicorn worker")
    assert not pool_workers(master.pid)  # the master has none: each worker made its own
    left = descendants(master.pid)
    os.killpg(master.pid, signal.SIGTERM)  # systemd's default: every process, classify's workers too
    assert master.wait(timeout=WAIT_S) == 0, server.log()[-3000:]
    wait_until(lambda: not any(running(pid) for pid in left), "every process of gunicorn ended")
