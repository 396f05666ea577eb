"""The edge's compute thread: the forward passes of every session, taken in turns (TakeTurns)."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future


class TakeTurns:
    """One compute thread that runs jobs a slice at a time, in turn.

    A job is a generator that yields between its slices and returns its result (a plain function is
    a job of one slice). Each turn runs one slice of the job first in line and puts the job back at
    the end of the line, so a job waits for its first slice at most one slice of each job ahead of
    it, however long they are. One thread: on a CPU one forward already uses every core, and on CUDA
    a compiled step's graphs are recorded per thread, so one thread records them once.
    """

    def __init__(self, name: str):
        self._line: deque[tuple] = deque()  # (generator, future) in turn order
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        """Jobs waiting for their next turn (not the one running)."""
        with self._cv:
            return len(self._line)

    def submit(self, gen) -> Future:
        """Run the generator `gen` (not started yet: its body runs on the compute thread) in turn; its
        result is what it returns. RuntimeError once closed."""
        future = Future()
        with self._cv:
            if self._closed:
                gen.close()
                raise RuntimeError("the edge's compute thread has stopped")
            self._line.append((gen, future))
            self._cv.notify()
        return future

    def call(self, fn, *args) -> Future:
        """Run fn(*args) in one turn."""

        def one_slice():
            return fn(*args)
            yield  # makes this a generator function: a job of one slice

        return self.submit(one_slice())

    def close(self) -> None:
        """Stop after the slice that runs: jobs still in line fail with RuntimeError."""
        with self._cv:
            self._closed = True
            line, self._line = list(self._line), deque()
            self._cv.notify()
        for gen, future in line:
            gen.close()
            future.set_exception(RuntimeError("the edge stopped"))

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._line and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                gen, future = self._line.popleft()
            try:
                next(gen)
            except StopIteration as done:
                future.set_result(done.value)
                continue
            except BaseException as e:  # the job's fault, reported to whoever waits for it
                future.set_exception(e)
                continue
            with self._cv:
                if self._closed:
                    gen.close()
                    future.set_exception(RuntimeError("the edge stopped"))
                else:
                    self._line.append((gen, future))
