"""A TCP proxy in front of the test S3 server that cuts responses mid-body, to show that a
dropped connection costs a retry and never a lost or doubled sample.

It forwards bytes both ways unchanged. Once ``grace`` bytes in all have gone back to the
client, a connection that has sent more than ``cut_after`` bytes back, while ``cuts``
remain, is closed on both sides
(a shutdown, which also wakes the other direction's blocked recv: the client sees the
connection end in the middle of the object body)."""
from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit


class CuttingProxy:
    def __init__(self, upstream_url: str, *, cut_after: int, cuts: int, grace: int = 0):
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname, parts.port)
        self.cut_after, self.cuts, self.grace = cut_after, cuts, grace
        self.cut_done = self.total = 0
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
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _should_cut(self, sent: int, more: int) -> bool:
        with self._lock:
            self.total += more
            if self.total > self.grace and sent > self.cut_after and self.cut_done < self.cuts:
                self.cut_done += 1
                return True
            return False

    def _pump(self, src: socket.socket, dst: socket.socket, to_client: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if to_client and self._should_cut(sent + len(data), len(data)):
                    dst.sendall(data[: max(0, self.cut_after - sent)])
                    return  # `finally` shuts both sockets: the client sees the body end early
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
