"""Run independent jobs in processes forked from this one, so each inherits what the parent built (memprofile's
warm start: fake parameters, optimizer state, FakeTensorMode's operator cache) without pickling it."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

import torch

from re2tal_cli.errors import Re2talError

T = TypeVar("T")


def default_workers() -> int:
    """Twice the usable CPUs on Linux (jobs differ in length), one where forking is unavailable or unsafe."""
    if not sys.platform.startswith("linux"):  # no fork (Windows), or fork unsafe with system frameworks (macOS)
        return 1
    if multiprocessing.current_process().daemon:  # a daemonic process may not start processes
        return 1
    cpus = len(os.sched_getaffinity(0))
    return 2 * cpus if cpus > 1 else 1


def run_forked(steps: list[Callable[[], T]], workers: int, on_result: Callable[[int], None] | None = None) -> list[T]:
    """Each step's result, in order: in this process with one worker, else each in a forked process (it inherits
    this process's state, unpickled), at most `workers` at once; a step's exception is raised here. `on_result(i)`
    is called in this process as step i's result arrives."""
    notify = on_result or (lambda index: None)
    if workers <= 1 or len(steps) <= 1:
        results = []
        for index, step in enumerate(steps):
            results.append(step())
            notify(index)
        return results
    context = multiprocessing.get_context("fork")
    results: list = [None] * len(steps)
    waiting = list(enumerate(steps))
    running: dict = {}  # receiving end of a pipe → (index, process)
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                index, step = waiting.pop(0)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_send_result, args=(step, sender), daemon=True)
                process.start()
                sender.close()
                running[receiver] = index, process
            for receiver in multiprocessing.connection.wait(list(running)):
                index, process = running.pop(receiver)
                try:
                    ok, value = receiver.recv()
                except EOFError:  # it died before it could send (killed, out of memory)
                    ok, value = False, None
                process.join()
                if not ok:
                    raise value or Re2talError(f"a worker process died (exit code {process.exitcode})")
                results[index] = value
                notify(index)
    finally:
        for _, process in running.values():
            process.terminate()
    return results


def _send_result(step: Callable[[], T], sender: multiprocessing.connection.Connection) -> None:
    """In a worker: the step's result, or its exception (raised again in the parent, with this traceback).

    One intra-op thread: a real operator in the child (memprofile's head assigns labels on real tensors) would
    otherwise enter the OpenMP pool the parent started before the fork, which hangs in the child (libgomp is not
    fork-safe). Fake operators compute nothing, so for them nothing else changes."""
    torch.set_num_threads(1)
    try:
        sender.send((True, step()))
    except Exception as error:
        error.add_note(f"in a worker process:\n{traceback.format_exc()}")
        try:
            sender.send((False, error))
        except Exception:  # an exception that does not pickle: its text
            sender.send((False, Re2talError(f"{type(error).__name__}: {error}")))
