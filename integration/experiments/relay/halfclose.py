#!/usr/bin/env python3
"""Half-close through a relay: each session sends SIZE bytes, then FIN (what an MQTT client
does with its last PUBLISH, DISCONNECT and close). The upstream counts what arrives before
its EOF. With --handshake the upstream first sends one byte that the client waits for (the
CONNACK's place), so that the relay has set the session up before the client's data comes.

    halfclose.py RELAY_PORT UPSTREAM_PORT SESSIONS SIZE [--handshake]

Prints the number of sessions that lost bytes. A session whose handshake byte is lost hangs;
./run gives each call a timeout."""
import socket
import sys

port, up, n, size = (int(x) for x in sys.argv[1:5])
handshake = "--handshake" in sys.argv
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", up))
srv.listen(1024)
short = 0
total = 0
payload = b"d" * size
for i in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    u, _ = srv.accept()
    if handshake:
        u.sendall(b"k")
        if c.recv(1) != b"k":
            raise SystemExit(f"session {i}: handshake byte lost")
    c.sendall(payload)
    c.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        d = u.recv(1 << 20)
        if not d:
            break
        got += len(d)
    short += got != size
    total += got
    u.close()
    c.close()
print(f"sessions {n} size {size} handshake {handshake}: {short} short, "
      f"bytes {total}/{n * size}")
