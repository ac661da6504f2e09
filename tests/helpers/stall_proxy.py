"""A TCP proxy on 127.0.0.1 that can stall: while frozen it keeps every connection open (and
accepts new ones) but forwards no byte either way, as a storage service that hangs would.
``thaw()`` lets the held bytes through again."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from urllib.parse import urlsplit


class StallProxy:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="stall-proxy").start()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self._listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._upstream, timeout=10)
        except OSError:
            client.close()
            return
        with self._lock:
            self._socks += [client, upstream]
        peer = {client: upstream, upstream: client}
        sel = selectors.DefaultSelector()
        for s in peer:
            s.setblocking(True)
            sel.register(s, selectors.EVENT_READ)
        try:
            while not self._closed:
                self._flowing.wait()
                for key, _ in sel.select(timeout=0.2):
                    self._flowing.wait()  # a freeze between select and read holds the bytes
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(65536)
                    if not data:
                        return
                    peer[src].sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            upstream.close()
