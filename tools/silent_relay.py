"""A TCP relay to a real server that can go silent: it keeps every connection open and stops
passing bytes either way, as a paused server or a stalled host does (the kernel still accepts
connections and acknowledges what is sent; nothing comes back). Restored, it passes on what
waited meanwhile; or it comes back as a host that restarted (:meth:`SilentProxy.restarted`),
which knows none of the connections it had. Used by the tests of stores that stop answering
and by ``tools/chaos_soak.py``."""

from __future__ import annotations

import selectors
import socket
import struct
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
        self.generation = 0
        """How often the far host restarted: a connection of an earlier one is reset."""
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @contextmanager
    def silent(self) -> Iterator[None]:
        self.speaking.clear()
        try:
            yield
        finally:
            self.speaking.set()

    def restarted(self) -> None:
        """Speak again as a host that restarted: every connection made before is dropped on
        the server's side and reset at its client's next segment (a rebooted host answers an
        unknown connection's segment with a reset); new connections pass."""
        self.generation += 1
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
        except OSError:  # the server is gone
            client.close()
            return
        self.sockets.append(server)
        try:
            for sock in (client, server):  # small messages go on at once, as from a server
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the client is gone meanwhile (or the relay closed it)
            server.close()
            client.close()
            return
        if self.closing.is_set():  # closed meanwhile (a silence ends with close): not left open
            server.close()
            client.close()
            return
        self._pass(client, server)

    def _pass(self, client: socket.socket, server: socket.socket) -> None:
        peer = {client: server, server: client}
        born = self.generation
        with selectors.DefaultSelector() as ready:
            for sock in peer:
                ready.register(sock, selectors.EVENT_READ)
            while not self.closing.is_set():
                self.speaking.wait()
                if self.generation != born:
                    self._forget(client, server, ready)
                    return
                for key, _ in ready.select(timeout=0.1):
                    if not self.speaking.is_set() or self.generation != born:
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

    def _forget(
        self, client: socket.socket, server: socket.socket, ready: selectors.BaseSelector
    ) -> None:
        """The far host restarted: its side of the connection is gone, and the client's next
        segment (or one waiting already) is answered with a reset."""
        ready.unregister(server)
        server.close()
        while not self.closing.is_set() and not ready.select(timeout=0.1):
            pass
        if not self.closing.is_set():  # else closed already
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
