"""Test hosts in a network namespace of their own, on the local cluster's pod bridge (cluster/netns.py).

Servers written in Python listen on a socket created inside the namespace (a thread enters it with
setns, makes the socket, and leaves; the socket stays there), so they run in this process and tests
can look at what they saw. Other servers run under `ip netns exec`.
"""
from __future__ import annotations

import ctypes
import os
import socket
import threading

from cluster.netns import Namespace, bridge_exists, create, delete

__all__ = ["Namespace", "bridge_exists", "create", "delete", "listening_socket"]
CLONE_NEWNET = 0x40000000


def listening_socket(host: str, port: int, namespace: Namespace | None) -> socket.socket:
    """A TCP socket listening on host:port, inside `namespace` when given (0: any free port)."""
    made: dict = {}

    def make() -> None:
        try:
            if namespace:
                with open(f"/run/netns/{namespace.name}") as handle:
                    if ctypes.CDLL(None, use_errno=True).setns(handle.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
            made["socket"] = sock
        except OSError as exc:
            made["error"] = exc

    thread = threading.Thread(target=make)  # setns changes only this thread's namespace
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]
    return made["socket"]
