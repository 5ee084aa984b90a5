"""Free 127.0.0.1 ports for the nodes a check starts, drawn below the kernel's ephemeral
range (ip_local_port_range). A port the kernel hands out for bind(0) lies in that range,
where any outgoing connection on the machine, the nodes' own included, can take it
between the check picking it and the node binding it; below it only an explicit bind can.

Usage: free_ports.py [N]   prints N (default 1) distinct free ports, space-separated.
As a module: free_ports(n) -> list of ints; free_port() -> int."""
import random
import socket
import sys


def ephemeral_start():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def is_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(n):
    top = ephemeral_start()
    low = 10000 if top > 12000 else 1024
    ports = []
    for _ in range(100 * n + 100):
        p = random.randrange(low, top)
        if p not in ports and is_free(p):
            ports.append(p)
            if len(ports) == n:
                return ports
    raise SystemExit(f"found {len(ports)} of {n} free ports below {top}")


def free_port():
    return free_ports(1)[0]


if __name__ == "__main__":
    print(" ".join(map(str, free_ports(int(sys.argv[1]) if len(sys.argv) > 1 else 1))))
