"""Hosts in a network namespace of their own, on the local cluster's pod bridge: the embedded registry, and
the e2e tier's test host. Pods reach servers there the way they reach a registry on another machine; this
machine reaches them through the bridge. Servers run under `ip netns exec` (Namespace.command).
"""
from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass


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


