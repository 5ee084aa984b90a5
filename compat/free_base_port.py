"""Prints a base port B with B..B+2, B+100..B+102, B+200..B+202 and B+300..B+302 free on
127.0.0.1: the layout `keel dev --base-port B` listens on (Kafka, Raft, HTTP and, with
--secure, the admin listener of three nodes).

B is drawn below the kernel's ephemeral range (ip_local_port_range): a port found free
there can still be taken, before the node binds it, by any outgoing connection on the
machine, its own nodes' included. Below that range only an explicit bind takes a port."""
import random
import socket

from free_ports import ephemeral_start

OFFSETS = (0, 1, 2, 100, 101, 102, 200, 201, 202, 300, 301, 302)


top = ephemeral_start() - max(OFFSETS) - 1
low = 10000 if top > 12000 else 1024
for _ in range(200):
    base = random.randrange(low, top)
    socks = []
    try:
        for off in OFFSETS:
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
else:
    raise SystemExit("no free base port found")
