"""A remote shard stream with a limit on silence: a dropped connection costs about a second.

When an object store's peer goes silent mid-response (a connection dropped without a reset,
a dead proxy, a NAT timeout), the S3 client notices only through curl's low-speed check,
which averages over a window of several seconds: 7-10 s per stall on the loopback store of
benchmarks/s3_cuts.py, whatever ``request_timeout`` says. ``GuardedStream`` reads the raw
object stream in ``chunk``-byte pieces (one ranged GET each, as the buffered stream did) on
a helper thread and gives up on a piece that takes longer than the limit: it raises
``StalledRead`` (an OSError), the reader's retry opens the shard again and reads past what it
already gave (edge_ray/data/records.py), and the abandoned request ends on its own thread.

The limit adapts so a slow link is never mistaken for a dead one: it is the larger of
``EDGE_READ_STALL_S`` (default 1 s) times 2 per earlier failure of this shard, and 8 times
the running mean of how long a piece took in this process.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

STALL_S = 1.0          # a piece that takes longer than this (at least) counts as a stall
SLOW_FACTOR = 8.0      # ... or longer than this many times the usual time of a piece


class StalledRead(OSError):
    """No piece of the object arrived within the limit; the caller retries."""


class _PieceTimes:
    """Running mean of the seconds one piece took (this process, all shards)."""

    def __init__(self):
        self._lock, self.mean = threading.Lock(), None

    def add(self, seconds: float) -> None:
        with self._lock:
            self.mean = seconds if self.mean is None else 0.8 * self.mean + 0.2 * seconds


PIECE_TIMES = _PieceTimes()


def stall_limit(failures: int = 0) -> float:
    base = float(os.environ.get("EDGE_READ_STALL_S", STALL_S)) * 2 ** failures
    usual = PIECE_TIMES.mean
    return max(base, SLOW_FACTOR * usual) if usual is not None else base


class GuardedStream:
    """``read(n)`` over a raw stream, fetched ``chunk`` bytes at a time within a time limit."""

    def __init__(self, opener, *, chunk: int, limit_s: float, where: str):
        """``opener()`` returns the raw stream; it runs (opening is a request too) within the limit."""
        self._chunk, self._limit, self._where = chunk, limit_s, where
        self._buf, self._at, self._eof, self._dead, self._raw = b"", 0, False, False, None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-read")
        try:
            self._raw = self._within_limit(opener, lambda f: f.exception() or f.result().close(),
                                           "no answer to opening it")
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    def _within_limit(self, fn, on_late, what: str):
        """``fn()`` on the helper thread; past the limit the stream is dead, ``on_late(future)``
        runs when the abandoned call ends, and StalledRead names ``what`` did not come."""
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=self._limit)
        except FutureTimeout:
            self._dead = True
            future.add_done_callback(on_late)  # the request ends on its thread
            raise StalledRead(f"{self._where}: {what} for {self._limit:.1f}s (a dropped connection?)") from None

    def _fetch(self) -> None:
        start = time.perf_counter()
        piece = self._within_limit(lambda: self._raw.read(self._chunk), lambda _: self._close_raw(), "no data")
        PIECE_TIMES.add(time.perf_counter() - start)
        self._buf, self._at, self._eof = piece, 0, len(piece) == 0

    def read(self, n: int = -1) -> bytes:
        if self._dead:
            raise StalledRead(f"{self._where}: the stream stalled before")
        out = []
        want = n if n is not None and n >= 0 else None
        while want is None or want > 0:
            if self._at >= len(self._buf):
                if self._eof:
                    break
                self._fetch()
                continue
            take = len(self._buf) - self._at if want is None else min(want, len(self._buf) - self._at)
            out.append(self._buf[self._at:self._at + take])
            self._at += take
            if want is not None:
                want -= take
        return b"".join(out)

    def readable(self) -> bool:
        return True

    def _close_raw(self) -> None:
        try:
            self._raw.close()
        except Exception:  # noqa: BLE001 - closing a broken stream may itself fail
            pass

    def close(self) -> None:
        if not self._dead and self._raw is not None:
            self._close_raw()
        self._pool.shutdown(wait=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
