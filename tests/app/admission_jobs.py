"""Jobs for tests/app/test_admission.py, run by an Admission's pool of threads or of processes: module-level
functions of a module a spawned worker imports cheaply (the standard library only, not the app)."""

from __future__ import annotations

import multiprocessing
import os
import sys

WAIT_S = 180  # generous: the machine may be busy; nothing depends on it being fast
_gate: Gate | None = None  # this process's, from `install`


class Gate:
    """Jobs that block until opened, counting how many run at once, across threads and processes alike:
    process-shared counters and events, handed to each worker by the pool's initializer (`install`)."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.open = ctx.Event()
        self.started = ctx.Semaphore(0)
        self.running = ctx.Value("i", 0)
        self.most = ctx.Value("i", 0)
        self.done = ctx.Value("i", 0)


def install(gate: Gate) -> None:
    """The pool's initializer: the gate this worker's jobs use."""
    global _gate
    _gate = gate


def job(value: int) -> int:
    """Wait for the gate to open; return `value`."""
    gate = _gate
    assert gate is not None, "install(gate) first"
    with gate.running.get_lock():
        gate.running.value += 1
        gate.most.value = max(gate.most.value, gate.running.value)
    gate.started.release()
    if not gate.open.wait(WAIT_S):
        raise TimeoutError("the gate was never opened")
    with gate.running.get_lock():
        gate.running.value -= 1
        gate.done.value += 1
    return value


def pid() -> int:
    """Wait for the gate to open; this worker's process id."""
    job(0)
    return os.getpid()


def crash() -> None:
    """End the worker process abruptly, as the kernel's OOM killer or a segfault would."""
    os._exit(70)


def imported(module: str) -> bool:
    return module in sys.modules
