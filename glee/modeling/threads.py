"""Token-chunk parallelism for the fast CPU path: a shared queue of chunks, one single-threaded worker per core.

PyTorch's intra-op parallelism splits every op statically between its threads and joins them at the end of
the op.  The fast path runs its token-wise blocks (encoder layers, early fusion) in cache-sized chunks, which
means many small ops; on a small or busy machine each join waits for the slowest thread, and a thread that the
OS has descheduled for a few milliseconds stalls every op.  ``run_chunks`` instead hands whole chunks to
``torch.get_num_threads()`` Python workers that each run single-threaded ops (PyTorch releases the GIL inside
ops): no join per op, and a worker that falls behind simply takes fewer chunks.  Grad mode, inference mode
and CPU autocast are carried over to the workers.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

_POOL: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()
_ACTIVE = threading.local()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if workers not in _POOL:
            _POOL[workers] = ThreadPoolExecutor(workers, thread_name_prefix="glee-chunks")
        return _POOL[workers]


def _python_dispatch_mode_active() -> bool:
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return _get_current_dispatch_mode() is not None


def run_chunks(fn: Callable[[int, int], None], total: int, chunk: int, device: torch.device) -> None:
    """Call ``fn(start, stop)`` for consecutive chunks covering ``range(total)``, in parallel on CPU.

    ``fn`` must write its results itself (e.g. into a preallocated tensor) and touch only its own rows.  On CPU
    with more than one torch thread and more than one chunk, workers pull chunks from a shared counter while
    torch runs single-threaded; torch's thread count is restored afterwards.  Elsewhere (GPU, one thread, one
    chunk, a nested call, or under a Python dispatch mode such as ``FlopCounterMode``) the chunks run in order
    on the calling thread.
    """
    starts = list(range(0, total, chunk))
    threads = torch.get_num_threads()
    # a dispatch mode (e.g. FlopCounterMode) is thread-local too and would miss the workers' ops
    sequential = getattr(_ACTIVE, "busy", False) or _python_dispatch_mode_active()
    if device.type != "cpu" or threads <= 1 or len(starts) <= 1 or sequential:
        for start in starts:
            fn(start, min(start + chunk, total))
        return
    workers = min(threads, len(starts))
    lock = threading.Lock()
    position = iter(starts)
    # grad mode, inference mode and autocast are thread-local: the workers take the caller's
    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()
    autocast = torch.is_autocast_enabled("cpu")
    autocast_dtype = torch.get_autocast_dtype("cpu")

    def work() -> None:
        torch.set_num_threads(1)  # also sets this thread's OpenMP team size, which oneDNN reads
        _ACTIVE.busy = True
        try:
            with (torch.inference_mode(inference), torch.set_grad_enabled(grad),
                  torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast)):
                while True:
                    with lock:
                        start = next(position, None)
                    if start is None:
                        return
                    fn(start, min(start + chunk, total))
        finally:
            _ACTIVE.busy = False

    torch.set_num_threads(1)
    try:
        futures = [_pool(workers).submit(work) for _ in range(workers)]
        for future in futures:
            future.result()  # re-raises a worker's exception
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def single_threaded(enabled: bool = True) -> Iterator[None]:
    """Run torch single-threaded inside the block (for stretches of many small ops, where joining threads
    after every op costs more than the op); the thread count is restored afterwards."""
    threads = torch.get_num_threads()
    if not enabled or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
