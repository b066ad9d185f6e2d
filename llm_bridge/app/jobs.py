"""One worker, one model run at a time: the queue that keeps concurrent users from sharing a CPU mid-inference.

Every model run (and every model load) is a :class:`Job` executed by a single worker thread in arrival
order.  A request for an image or a chat answer waits for its job; a video job reports progress that the
page polls.  When ``max_waiting`` jobs already wait, a new one is refused with :class:`QueueFull` (the server
answers HTTP 503 with a "try again" message) instead of piling up.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import secrets
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("glee.app")


class AppError(Exception):
    """A problem with the user's request: shown on the page as is, with an HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class QueueFull(AppError):
    def __init__(self, waiting: int) -> None:
        super().__init__(f"the server is busy: {waiting} jobs are already waiting; try again in a minute", 503)


@dataclass
class Job:
    """One unit of model work.  ``fn(job)`` runs on the worker thread and may call :meth:`report`."""

    kind: str
    fn: Callable[[Job], Any]
    id: str = field(default_factory=lambda: secrets.token_hex(16))
    status: str = "queued"  # queued -> running -> done | error
    done: int = 0
    total: int | None = None
    message: str = ""
    result: Any = None
    error: str | None = None
    error_status: int = 500
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    position_at_submit: int = 0  # jobs ahead of this one when it arrived
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future, repr=False)

    def report(self, done: int, total: int | None = None, message: str | None = None) -> None:
        """Progress for the page's bar (e.g. frames tracked of frames in the video)."""
        self.done = done
        if total is not None:
            self.total = total
        if message is not None:
            self.message = message

    def timing(self) -> dict[str, float | None]:
        return {"submitted": self.submitted, "started": self.started, "finished": self.finished,
                "waited_s": None if self.started is None else round(self.started - self.submitted, 3),
                "ran_s": None if self.finished is None or self.started is None
                else round(self.finished - self.started, 3)}


class JobQueue:
    """A FIFO of jobs and the one thread that runs them."""

    def __init__(self, max_waiting: int = 8, keep: int = 256) -> None:
        self.max_waiting = max_waiting
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # recent jobs by id, for polling
        self._keep = keep
        self._lock = threading.Lock()
        self._order: list[str] = []  # ids of queued (not yet started) jobs, in order
        self._running: Job | None = None
        self._thread = threading.Thread(target=self._work, name="glee-app-worker", daemon=True)
        self._thread.start()

    def submit(self, kind: str, fn: Callable[[Job], Any]) -> Job:
        with self._lock:
            if len(self._order) >= self.max_waiting:
                raise QueueFull(len(self._order))
            job = Job(kind, fn)
            job.position_at_submit = len(self._order) + (self._running is not None)
            self._order.append(job.id)
            self._jobs[job.id] = job
            while len(self._jobs) > self._keep:
                self._jobs.popitem(last=False)
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise KeyError(f"no such job {job_id[:40]!r} (finished jobs are forgotten after a while)")
        return job

    def position(self, job: Job) -> int:
        """Jobs that run before this one (0 when it runs or is next)."""
        with self._lock:
            if job.id not in self._order:
                return 0
            return self._order.index(job.id) + (self._running is not None)

    def waiting(self) -> int:
        with self._lock:
            return len(self._order)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._order.remove(job.id)
                self._running = job
            job.status, job.started = "running", time.time()
            try:
                job.result = job.fn(job)
                job.status = "done"
            except AppError as exc:
                job.status, job.error, job.error_status = "error", exc.message, exc.status
            except (ValueError, KeyError, FileNotFoundError, TypeError) as exc:
                # the libraries' input errors name the problem and the fix: pass them on
                job.status, job.error, job.error_status = "error", _message(exc), 400
            except Exception as exc:  # a bug or a resource problem: keep serving, tell the user, log it
                log.error("job %s (%s) failed:\n%s", job.id, job.kind, traceback.format_exc())
                job.status, job.error, job.error_status = "error", f"internal error: {_message(exc)}", 500
            finally:
                job.finished = time.time()
                with self._lock:
                    self._running = None
            if job.status == "done":
                job.future.set_result(job.result)
            else:
                job.future.set_exception(AppError(job.error or "failed", job.error_status))


def _message(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(text) if text else type(exc).__name__
