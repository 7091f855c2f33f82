"""A TCP proxy on loopback that misbehaves on demand, between isaacfs (its HTTP pool, or
omni.client) and the S3 server.

Modes (change them at any time through ``proxy.mode``):
- "pass": forward as is; ``throttle`` (bytes/s, server to client) and ``delay`` (s, per
  connection) still apply;
- "refuse": close new connections at once;
- "stall": accept, then never answer (connections already open go silent too);
- "cut": forward ``cut_after`` bytes of the answer, then close (a body cut short);
- "reset": forward ``cut_after`` bytes of the answer, then reset the connection (RST).
Every loop is bounded by the connection's life; ``close()`` ends all of them.
"""

from __future__ import annotations

import socket
import threading
import time


class FaultProxy:
    def __init__(self, target_port: int, listener: socket.socket | None = None) -> None:
        """Forwards to ``target_port`` on loopback; listens on ``listener`` when given (a socket
        made elsewhere, such as inside a network namespace), else on a free loopback port."""
        self.target = ("127.0.0.1", target_port)
        self.mode = "pass"
        self.delay = 0.0
        self.throttle = 0  # bytes per second from server to client; 0: unlimited
        self.cut_after = 0
        self.up_bytes = 0  # bytes forwarded from clients to the server (an upload's progress)
        self.down_bytes = 0  # bytes forwarded from the server to clients (a download's progress)
        self.listener = listener or socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._track(client)
            if self.mode == "refuse":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.mode == "stall":
            self._closing.wait()
            client.close()
            return
        if self.delay:
            time.sleep(self.delay)
        try:
            server = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        self._track(server)
        threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
        self._pump(server, client, True)

    def _pump(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        sent = 0
        started = time.monotonic()
        try:
            while not self._closing.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if self.mode == "stall":
                    continue  # swallowed: the peer hears nothing more
                if downstream and self.mode in ("cut", "reset") and sent + len(data) > self.cut_after:
                    sink.sendall(data[: max(0, self.cut_after - sent)])
                    if self.mode == "reset":
                        sink.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        sink.close()
                        return
                    break
                sink.sendall(data)
                sent += len(data)
                if downstream:
                    self.down_bytes += len(data)
                else:
                    self.up_bytes += len(data)
                if downstream and self.throttle:
                    ahead = sent / self.throttle - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def drop(self) -> None:
        """Reset every connection open now (a server that died: kept-alive connections too)."""
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    sock.close()
                except OSError:
                    pass
            self._sockets.clear()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass
