"""The scheduler in-process: batching is invisible, odd sampling values are safe, and a failing engine
fails the requests in flight (500) instead of killing the thread and hanging every client."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from app.scheduler import DeadlineExceeded, InternalError, NotReady, QueueFull, Scheduler
from nanochat.backend import SamplingParams
from nanochat.checkpoint import load_checkpoint
from nanochat.engine import Engine

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(DEMO)


def prompt(tokenizer, text: str) -> list[int]:
    conversation = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]}
    return tokenizer.render_for_completion(conversation)


async def tokens(scheduler: Scheduler, ids: list[int], params: SamplingParams) -> list[int]:
    return [delta.token async for delta in await scheduler.submit(ids, params)]


def test_concurrent_greedy_equals_sequential(demo):
    async def main():
        scheduler = Scheduler(Engine(demo.model, demo.tokenizer, max_batch=4), max_queue=32)
        scheduler.start()
        params = SamplingParams(max_tokens=24, temperature=0.0)
        prompts = [prompt(demo.tokenizer, f"question number {i}?") for i in range(12)]
        alone = [await tokens(scheduler, p, params) for p in prompts]
        together = await asyncio.gather(*(tokens(scheduler, p, params) for p in prompts))
        await scheduler.drain(1)
        return alone, together

    alone, together = asyncio.run(main())
    assert together == alone


def test_a_vanishing_temperature_is_greedy_not_nan(demo):
    """Found by fuzzing: logits / 1e-300 overflowed to inf and the sampler raised on NaN."""

    async def main():
        scheduler = Scheduler(Engine(demo.model, demo.tokenizer, max_batch=2))
        scheduler.start()
        ids = prompt(demo.tokenizer, "hello")
        greedy = await tokens(scheduler, ids, SamplingParams(max_tokens=12, temperature=0.0))
        tiny = await tokens(scheduler, ids, SamplingParams(max_tokens=12, temperature=1e-300, seed=1))
        await scheduler.drain(1)
        return greedy, tiny

    greedy, tiny = asyncio.run(main())
    assert tiny == greedy


class PausingEngine(Engine):
    """The real engine, whose `begin` waits for the test: a request is then out of the queue and not yet
    prefilling, the moment a drain once mistook for idle."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.in_begin, self.go_on = threading.Event(), threading.Event()

    def begin(self, prompt_ids, params):
        self.in_begin.set()
        assert self.go_on.wait(timeout=120), "the test never let begin go on"
        return super().begin(prompt_ids, params)


def test_a_drain_waits_for_a_request_being_admitted(demo):
    """Found by the stress runs: SIGTERM's drain saw nothing busy while the scheduler thread admitted a
    queued request (out of the queue, not yet prefilling), stopped, and cut it with "the server stopped
    before this request finished"."""
    engine = PausingEngine(demo.model, demo.tokenizer, max_batch=1)

    async def main():
        scheduler = Scheduler(engine)
        scheduler.start()
        stream = await scheduler.submit(
            prompt(demo.tokenizer, "hello"), SamplingParams(max_tokens=8, temperature=0)
        )
        assert await asyncio.to_thread(engine.in_begin.wait, 120)
        drain = asyncio.create_task(scheduler.drain(600))
        await asyncio.sleep(0.2)  # the drain's first looks happen while begin is held (its outcome does not
        engine.go_on.set()  # depend on this pause: held or not, the request must finish)
        deltas = [delta async for delta in stream]
        return deltas, await drain

    deltas, cut = asyncio.run(main())
    assert cut == 0 and len(deltas) >= 1 and deltas[-1].finish_reason in ("stop", "length")


class FailingOnceEngine(Engine):
    """The real engine, with one injected fault in its first decode step."""

    failed = False

    def decode_step(self):
        if not self.failed:
            self.failed = True
            raise RuntimeError("injected fault")
        return super().decode_step()


def test_an_engine_failure_fails_the_requests_in_flight_and_the_server_goes_on(demo, caplog):
    async def main():
        scheduler = Scheduler(FailingOnceEngine(demo.model, demo.tokenizer, max_batch=2))
        scheduler.start()
        ids = prompt(demo.tokenizer, "hello")
        params = SamplingParams(max_tokens=8, temperature=0.0)
        with pytest.raises(InternalError):
            await tokens(scheduler, ids, params)
        after = await tokens(scheduler, ids, params)
        stats = scheduler.stats()
        await scheduler.drain(1)
        return after, stats

    after, stats = asyncio.run(main())
    assert len(after) >= 1 and stats["active_sequences"] == 0 and stats["free_slots"] == 2
    assert "the scheduler turn failed" in caplog.text


def test_a_full_queue_rejects_at_once(demo):
    async def main():
        scheduler = Scheduler(Engine(demo.model, demo.tokenizer, max_batch=1), max_queue=1)
        scheduler.start()
        ids = prompt(demo.tokenizer, "hello")
        params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
        first = await scheduler.submit(ids, params)
        second = await scheduler.submit(ids, params)
        with pytest.raises(QueueFull):
            await scheduler.submit(ids, params)
        first.cancel()
        second.cancel()
        await scheduler.drain(1)

    asyncio.run(main())


def test_requests_past_their_deadline_end_with_504_running_or_queued(demo):
    async def main():
        scheduler = Scheduler(Engine(demo.model, demo.tokenizer, max_batch=1), request_timeout_s=0.15)
        scheduler.start()
        ids = prompt(demo.tokenizer, "hello")
        long = SamplingParams(max_tokens=250, temperature=0.0, ignore_eos=True)
        running = await scheduler.submit(ids, long, timeout_s=0.15)
        queued = await scheduler.submit(ids, long, timeout_s=0.05)  # waits behind `running`, then expires
        outcomes = []
        for stream in (queued, running):
            try:
                outcomes.append(len([d async for d in stream]))
            except DeadlineExceeded:
                outcomes.append("deadline")
        quick = await tokens(scheduler, ids, SamplingParams(max_tokens=4, temperature=0.0))
        stats = scheduler.stats()
        await scheduler.drain(1)
        return outcomes, quick, stats

    outcomes, quick, stats = asyncio.run(main())
    assert outcomes == ["deadline", "deadline"]  # cut: a stream that ran to its 250 tokens counts them
    assert len(quick) == 4 and stats["totals"]["timed_out"] == 2 and stats["free_slots"] == 1


def test_a_drain_serves_the_queued_requests_and_refuses_new_ones(demo):
    """Requests already queued when the drain starts are served within the grace, not failed; a request
    submitted during the drain gets NotReady (503)."""

    async def main():
        scheduler = Scheduler(Engine(demo.model, demo.tokenizer, max_batch=1), max_queue=8)
        scheduler.start()
        ids = prompt(demo.tokenizer, "hello")
        params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
        streams = [await scheduler.submit(ids, params) for _ in range(4)]  # 1 runs, 3 wait
        queued = scheduler.stats()["queue_depth"]
        draining = asyncio.create_task(scheduler.drain(60))
        await asyncio.sleep(0)  # the drain has begun
        with pytest.raises(NotReady):
            await scheduler.submit(ids, params)
        served = [len([d async for d in stream]) for stream in streams]
        await draining
        return queued, served, scheduler.stats()

    queued, served, stats = asyncio.run(main())
    assert queued >= 2
    assert served == [20, 20, 20, 20]
    assert stats["state"] == "stopped" and stats["totals"]["completed"] == 4


def test_a_drain_cuts_what_is_left_after_the_grace(demo):
    async def main():
        scheduler = Scheduler(Engine(demo.model, demo.tokenizer, max_batch=1), max_queue=8)
        scheduler.start()
        ids = prompt(demo.tokenizer, "hello")
        params = SamplingParams(max_tokens=250, temperature=0.0, ignore_eos=True)
        streams = [await scheduler.submit(ids, params) for _ in range(2)]
        await scheduler.drain(0)
        outcomes = []
        for stream in streams:
            try:
                outcomes.append(len([d async for d in stream]))
            except NotReady:
                outcomes.append("not ready")
        return outcomes

    assert asyncio.run(main()) == ["not ready", "not ready"]
