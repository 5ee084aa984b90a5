"""Prints a base port B with B..B+2, B+100..B+102 and B+200..B+202 free on 127.0.0.1:
the layout `keel dev --base-port B` listens on (Kafka, Raft and HTTP of three nodes)."""
import random
import socket

for _ in range(200):
    base = random.randrange(20000, 40000)
    socks = []
    try:
        for off in (0, 1, 2, 100, 101, 102, 200, 201, 202):
            s = socket.socket()
            s.bind(("127.0.0.1", base + off))
            socks.append(s)
        print(base)
        break
    except OSError:
        pass
    finally:
        for s in socks:
            s.close()
