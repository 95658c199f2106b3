"""A TCP relay to a real server that can go silent: it keeps every connection open and stops
passing bytes either way, as a paused server or a stalled host does (the kernel still accepts
connections and acknowledges what is sent; nothing comes back). Restored, it passes on what
waited meanwhile."""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SilentProxy:
    def __init__(self, host: str, port: int, listen_on: str = "127.0.0.1") -> None:
        self.target = (host, port)
        self.listener = socket.create_server((listen_on, 0))
        self.port = self.listener.getsockname()[1]
        self.speaking = threading.Event()
        self.speaking.set()
        self.closing = threading.Event()
        self.connections = 0
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @contextmanager
    def silent(self) -> Iterator[None]:
        self.speaking.clear()
        try:
            yield
        finally:
            self.speaking.set()

    def close(self) -> None:
        self.closing.set()
        self.speaking.set()
        for sock in self.sockets:
            sock.close()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1  # counted as the kernel accepts it, silent or not
            self.sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self.speaking.wait()  # a silent server's kernel accepts; nothing answers
        try:
            server = socket.create_connection(self.target)
            self.sockets.append(server)
            for sock in (client, server):  # small messages go on at once, as from a server
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the server, or the client meanwhile, is gone
            client.close()
            return
        self._pass(client, server)

    def _pass(self, client: socket.socket, server: socket.socket) -> None:
        peer = {client: server, server: client}
        with selectors.DefaultSelector() as ready:
            for sock in peer:
                ready.register(sock, selectors.EVENT_READ)
            while not self.closing.is_set():
                self.speaking.wait()
                for key, _ in ready.select(timeout=0.1):
                    if not self.speaking.is_set():
                        break  # silenced meanwhile: what came waits in the kernel's buffers
                    try:
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if data:
                            peer[key.fileobj].sendall(data)  # type: ignore[index]
                    except OSError:
                        data = b""
                    if not data:
                        client.close()
                        server.close()
                        return
