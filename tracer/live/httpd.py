"""A small HTTP server for /metrics with bounded resources.

prometheus_client's own server (http.server with a thread per connection)
has no limit on threads or connections and no timeout: a client that opens
connections and sends nothing (slowloris) holds a thread each, forever.
Here:

- a fixed pool of WORKERS threads answers requests; accepted connections
  wait in a queue of at most QUEUE; beyond that a connection gets
  "503 Service Unavailable" at once and is closed;
- each connection has DEADLINE seconds in all to send its request (at most
  MAX_HEADER bytes) and take the answer; after that it is closed;
- one request per connection (Connection: close), GET or HEAD of /metrics
  (or / for a pointer to it).

The answer is `render()`: bytes in the Prometheus text format.
"""

from __future__ import annotations

import queue
import socket
import threading
import time

WORKERS = 4
QUEUE = 32
DEADLINE = 10.0
MAX_HEADER = 8192

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


def _response(code: int, body: bytes, ctype: str = "text/plain; charset=utf-8", head: bool = False) -> bytes:
    hdr = (f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {ctype}\r\n"
           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return hdr if head else hdr + body


class MetricsServer:
    """Serve `render()` at /metrics on (host, port) (see the module docstring)."""

    def __init__(self, host: str, port: int, render, content_type: str, workers: int = WORKERS,
                 backlog: int = QUEUE, deadline: float = DEADLINE):
        self.render = render
        self.content_type = content_type
        self.deadline = deadline
        self.rejected = 0                  # connections refused with 503 (queue full)
        self.timed_out = 0                 # connections closed at the deadline
        self.accepted = 0                  # connections accepted (queued or refused)
        self._accepted = threading.Condition()
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        fam, typ, proto, _, addr = infos[0]
        self.sock = socket.socket(fam, typ, proto)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(addr)
            self.sock.listen(backlog)
        except OSError:
            self.sock.close()
            raise
        self.sock.settimeout(0.5)          # the acceptor checks for close() twice a second
        self.address = self.sock.getsockname()[:2]
        self._queue: queue.Queue = queue.Queue(maxsize=backlog)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="cttrace-http-accept", daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"cttrace-http-{i}", daemon=True)
                          for i in range(workers)]

    @property
    def waiting(self) -> int:
        """Connections accepted and waiting for a worker."""
        return self._queue.qsize()

    def wait_accepted(self, n: int, timeout: float) -> bool:
        """Wait until `n` connections were accepted and queued or refused
        (False after `timeout` seconds): a point where `waiting` and
        `rejected` are settled for them."""
        with self._accepted:
            return self._accepted.wait_for(lambda: self.accepted >= n, timeout)

    def start(self) -> "MetricsServer":
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        for _ in self._threads[1:]:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
        for t in self._threads:
            t.join(timeout=self.deadline + 1)
        self.sock.close()
        while True:                        # connections still queued
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].close()

    def __enter__(self) -> "MetricsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- threads --------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.1)            # e.g. EMFILE: do not spin
                continue
            try:
                self._queue.put_nowait((conn, time.monotonic() + self.deadline))
            except queue.Full:
                self.rejected += 1
                try:
                    conn.setblocking(False)
                    conn.send(_response(503, b"busy: too many scrapes at once\n"))
                except OSError:
                    pass
                conn.close()
            with self._accepted:
                self.accepted += 1
                self._accepted.notify_all()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            conn, until = item
            try:
                self._serve(conn, until)
            except OSError:                # the client went away or ran out of time
                pass
            finally:
                conn.close()

    def _serve(self, conn: socket.socket, until: float) -> None:
        req = bytearray()
        while b"\r\n\r\n" not in req and b"\n\n" not in req:
            left = until - time.monotonic()
            if left <= 0:
                self.timed_out += 1
                return
            if len(req) > MAX_HEADER:
                self._send(conn, until, _response(431, b"request header too large\n"))
                self._drain(conn, until)
                return
            conn.settimeout(left)
            try:
                chunk = conn.recv(4096)
            except socket.timeout:
                self.timed_out += 1
                return
            if not chunk:
                return
            req += chunk
        if min(i for i in (req.find(b"\r\n\r\n"), req.find(b"\n\n")) if i >= 0) > MAX_HEADER:
            # complete, but the read that ended it crossed the limit
            self._send(conn, until, _response(431, b"request header too large\n"))
            self._drain(conn, until)
            return
        line = bytes(req.split(b"\n", 1)[0]).decode("latin-1").strip().split()
        if len(line) != 3 or not line[2].startswith("HTTP/"):
            self._send(conn, until, _response(400, b"bad request\n"))
            return
        method, path = line[0], line[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            self._send(conn, until, _response(405, b"GET /metrics\n"))
            return
        head = method == "HEAD"
        if path == "/metrics":
            try:
                body = self.render()
            except Exception as e:         # a scrape fails, the server stays
                self._send(conn, until, _response(500, f"{type(e).__name__}: {e}\n".encode(
                    "utf-8", "backslashreplace"), head=head))
                return
            self._send(conn, until, _response(200, body, self.content_type, head))
        elif path == "/":
            self._send(conn, until, _response(200, b"cttrace exporter: see /metrics\n", head=head))
        else:
            self._send(conn, until, _response(404, b"not found: see /metrics\n", head=head))

    def _drain(self, conn: socket.socket, until: float, most: int = 1 << 20) -> None:
        """Read what the client still sends (until the deadline, at most
        `most` bytes), so that closing does not reset the connection before
        it has read the answer."""
        conn.shutdown(socket.SHUT_WR)
        while most > 0:
            left = until - time.monotonic()
            if left <= 0:
                return
            conn.settimeout(min(left, 1.0))
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                return
            if not chunk:
                return
            most -= len(chunk)

    def _send(self, conn: socket.socket, until: float, data: bytes) -> None:
        view = memoryview(data)
        while view:
            left = until - time.monotonic()
            if left <= 0:
                self.timed_out += 1
                return
            conn.settimeout(left)
            n = conn.send(view)
            view = view[n:]
