"""Test hosts in a network namespace of their own, on the local cluster's pod bridge.

Pods reach servers there the way they reach a registry on another machine; the tests
and the operator reach them through the bridge. Servers written in Python listen on a
socket created inside the namespace (a thread enters it with setns, makes the socket,
and leaves; the socket stays there), so they run in this process and tests can look
at what they saw. Other servers run under `ip netns exec`.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Namespace:
    name: str
    address: str  # its address on the bridge

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def bridge_exists(bridge: str) -> bool:
    return _ip("link", "show", bridge, check=False).returncode == 0


def _host_end(name: str) -> str:
    return f"{name}-br"[:15]


def create(name: str, bridge: str, address: str, prefix: int) -> Namespace:
    """A namespace with one interface on `bridge` at `address`, and loopback (replaces a leftover one)."""
    delete(name)
    host_end = _host_end(name)
    _ip("netns", "add", name)
    _ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", name)
    _ip("link", "set", host_end, "master", bridge, "up")
    for args in (("addr", "add", f"{address}/{prefix}", "dev", "eth0"), ("link", "set", "eth0", "up"),
                 ("link", "set", "lo", "up")):
        _ip("-n", name, *args)
    return Namespace(name, address)


def delete(name: str) -> None:
    """The namespace and its veth pair, also what a killed run left: a server still running in it would keep
    the namespace, and so the veth's host end, alive after its name is gone."""
    for pid in _ip("netns", "pids", name, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    _ip("netns", "delete", name, check=False)
    _ip("link", "delete", _host_end(name), check=False)


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
