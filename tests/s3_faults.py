"""A TCP proxy in front of the test S3 server that cuts responses mid-body, to show that a
dropped connection costs a retry and never a lost or doubled sample.

It forwards bytes both ways unchanged. Once ``grace`` bytes in all have gone back to the
client, a connection that has sent more than ``cut_after`` bytes back, while ``cuts``
remain, is closed on both sides
(a shutdown, which also wakes the other direction's blocked recv: the client sees the
connection end in the middle of the object body).

With ``fraction`` instead, each new connection is cut with that probability (seeded), after
a random number of response bytes below ``cut_after`` (benchmarks/s3_cuts.py: a flaky store)."""
from __future__ import annotations

import random
import socket
import threading
from urllib.parse import urlsplit


class CuttingProxy:
    def __init__(self, upstream_url: str, *, cut_after: int, cuts: int, grace: int = 0,
                 fraction: float | None = None, seed: int = 0, stall: bool = False):
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname, parts.port)
        self.cut_after, self.cuts, self.grace = cut_after, cuts, grace
        self.fraction, self._rng, self.stall = fraction, random.Random(seed), stall
        self.cut_done = self.total = self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:  # the upstream is gone (stopped after a test): drop this client
                client.close()
                continue
            with self._lock:
                self.connections += 1
                at = None
                if self.fraction is not None and self._rng.random() < self.fraction:
                    at = self._rng.randrange(1, self.cut_after)
            ended = threading.Event()  # the client's side closed: a stalled response may end too
            threading.Thread(target=self._pump, args=(client, server, False, None, ended), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True, at, ended), daemon=True).start()

    def _should_cut(self, sent: int, more: int) -> bool:
        with self._lock:
            self.total += more
            if self.total > self.grace and sent > self.cut_after and self.cut_done < self.cuts:
                self.cut_done += 1
                return True
            return False

    def _pump(self, src: socket.socket, dst: socket.socket, to_client: bool, at: int | None = None,
              ended: threading.Event | None = None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if to_client and self.fraction is not None:
                    if at is not None and sent + len(data) > at:
                        with self._lock:
                            self.cut_done += 1
                        dst.sendall(data[: at - sent])
                        if self.stall and ended is not None:  # the peer goes silent, the socket stays open
                            ended.wait(300)
                        return
                elif to_client and self._should_cut(sent + len(data), len(data)):
                    dst.sendall(data[: max(0, self.cut_after - sent)])
                    return  # `finally` shuts both sockets: the client sees the body end early
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            if ended is not None and not to_client:
                ended.set()
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
