"""The lab peer's servers, run inside the peer namespace by tests/lab.py:

- TCP echo (HTTP-like request/response): reads, echoes, closes on EOF;
- UDP echo (DNS-like query/answer).

Usage: python3 -m tests.labserver --addr A --tcp PORT --udp PORT --ready FILE
Single-threaded (selectors); ends on SIGTERM.
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="0.0.0.0")
    ap.add_argument("--tcp", type=int, action="append", default=[])
    ap.add_argument("--udp", type=int, action="append", default=[])
    ap.add_argument("--ready")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sel = selectors.DefaultSelector()
    for port in a.tcp:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((a.addr, port))
        s.listen(4096)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "listen")
    for port in a.udp:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        u.bind((a.addr, port))
        u.setblocking(False)
        sel.register(u, selectors.EVENT_READ, "udp")
    if a.ready:
        with open(a.ready, "w") as f:
            f.write("ready\n")
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if key.data == "listen":
                while True:
                    try:
                        c, _ = s.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ, "conn")
            elif key.data == "udp":
                while True:
                    try:
                        data, peer = s.recvfrom(2048)
                    except BlockingIOError:
                        break
                    try:
                        s.sendto(data, peer)
                    except OSError:
                        pass
            else:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    try:
                        s.send(data)
                    except OSError:
                        pass
                else:
                    sel.unregister(s)
                    s.close()


if __name__ == "__main__":
    main()
