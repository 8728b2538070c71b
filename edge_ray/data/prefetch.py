"""Run a conversion a few items ahead in a thread, on its own CUDA stream (`prefetch`)."""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Callable, Iterable, Iterator

import torch


def add_seconds(timings: dict | None, key: str, started: float) -> None:
    """timings[key] += seconds since `started` (a `time.perf_counter()`); None: nothing."""
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - started


class _Failed:
    def __init__(self, err: BaseException):
        self.err = err


_DONE = object()


def prefetch(items: Iterable, convert: Callable, device: torch.device, depth: int = 2,
             priority: int = 0, timings: dict | None = None, name: str = "feeder") -> Iterator:
    """`convert(item)` for each item, in order, computed up to `depth` items ahead in a
    thread. On CUDA the thread works on its own stream and each result is handed over
    with an event, so the consumer's stream waits for exactly that result. `priority`
    is the CUDA stream priority (lower is higher; -1 is high): a high-priority stream's
    small kernels get the next free SMs instead of queueing behind the training step's.
    `timings`, if given, sums the thread's seconds waiting for `items` (`{name}_source`),
    in `convert` (`{name}_convert`) and for a free slot, i.e. ahead of the consumer
    (`{name}_blocked`).

    Two prefetches can be chained: the outer thread consumes the inner one's results on
    its own stream, so the two conversions overlap (`gpu.GPU_FEEDERS`, "pipelined").

    The DataLoader iterator is consumed inside the thread too (unpickling a batch is CPU
    work as well). Closing the generator early stops the thread at its next hand-over.
    """
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    cuda = device.type == "cuda"
    side = torch.cuda.Stream(device=device, priority=priority) if cuda else None

    def add(key: str, started: float) -> None:
        add_seconds(timings, f"{name}_{key}", started)

    def hand_over(item) -> bool:
        started = time.perf_counter()
        try:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False
        finally:
            add("blocked", started)

    def feed() -> None:
        source = iter(items)
        try:
            context = (torch.cuda.stream(side) if cuda else contextlib.nullcontext())
            if cuda:
                torch.cuda.set_device(device)
            with context:
                while True:
                    started = time.perf_counter()
                    item = next(source, _DONE)
                    add("source", started)
                    if item is _DONE:
                        break
                    started = time.perf_counter()
                    result = convert(item)
                    add("convert", started)
                    event = None
                    if cuda:
                        event = torch.cuda.Event()
                        event.record(side)
                    if not hand_over((result, event)):
                        return
            hand_over(_DONE)
        except BaseException as err:  # re-raised in the consumer, with its traceback
            hand_over(_Failed(err))
        finally:
            close = getattr(source, "close", None)
            if close is not None:  # an inner prefetch (or DataLoader) stops its own thread
                close()

    thread = threading.Thread(target=feed, name="edge-gpu-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = _next(ready, thread)
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.err
            result, event = item
            if cuda:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                for t in _tensors(result):
                    if t.is_cuda:  # its memory must outlive this stream's use, not the side stream's
                        t.record_stream(current)
            yield result
    finally:
        stop.set()


def _next(ready: queue.Queue, thread: threading.Thread):
    while True:
        try:
            return ready.get(timeout=1.0)
        except queue.Empty:
            if not thread.is_alive():  # it may have put its last item just before ending
                try:
                    return ready.get_nowait()
                except queue.Empty:
                    raise RuntimeError("the GPU decode thread ended without a result") from None


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            yield from _tensors(x)
