"""The real-cluster tier's test host: a run that was killed must not keep the next one from starting."""
import os
import subprocess

import pytest

import netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
BRIDGE, NAME = "kiln-t-bridge", "kiln-t-host"


@pytest.fixture
def bridge():
    subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    yield BRIDGE
    netns.delete(NAME)
    subprocess.run(["ip", "link", "delete", BRIDGE], check=False)


def test_a_namespace_a_killed_run_left_with_a_server_in_it_is_replaced(bridge):
    netns.create(NAME, bridge, "10.199.0.2", 24)
    # A server the killed run started there: it holds the namespace, and so the veth, past `ip netns delete`.
    server = subprocess.Popen(["ip", "netns", "exec", NAME, "sleep", "600"])
    try:
        again = netns.create(NAME, bridge, "10.199.0.2", 24)
        assert server.wait(timeout=10) != 0  # stopped with what it held
        shown = subprocess.run(["ip", "-n", again.name, "-brief", "addr", "show", "eth0"], check=True,
                               capture_output=True, text=True).stdout
        assert "10.199.0.2/24" in shown
    finally:
        server.kill()
