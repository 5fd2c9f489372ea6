#!/usr/bin/env python3
"""Flow control through a relay: the upstream accepts and never reads; the client sends as
fast as the relay lets it for 3 s. A relay with flow control stops the client after a few
socket buffers (a few MB); the figure printed is how much it took, and how much of the
machine's memory went with it.

    backpressure.py RELAY_PORT UPSTREAM_PORT"""
import socket
import sys
import time

port, up = int(sys.argv[1]), int(sys.argv[2])


def mem_available_mb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    raise SystemExit("no MemAvailable")


srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", up))
srv.listen()
c = socket.create_connection(("127.0.0.1", port))
u, _ = srv.accept()
c.setblocking(False)
before = mem_available_mb()
sent = 0
chunk = b"x" * 65536
t0 = time.time()
while time.time() - t0 < 3:
    try:
        sent += c.send(chunk)
    except BlockingIOError:
        time.sleep(0.01)
print(f"accepted from the client in 3 s with the upstream not reading: {sent / 1e6:.0f} MB; "
      f"MemAvailable {before} -> {mem_available_mb()} MB")
