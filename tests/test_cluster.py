"""The local cluster's recipe (cluster/): pinned versions that agree, and a pod network that stays inside the machine."""
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib

import pytest
from cluster import procs, registry, up, watchdog
from cluster.versions import BUILDKIT, BUILDKIT_IMAGE, COMPONENTS, HERE

from kiln.spec.settings import DEFAULT_BUILDKIT_IMAGE

from conftest import ROOT, load_yaml_docs


def test_each_tools_go_mod_requires_the_pinned_version():
    for component in (c for c in COMPONENTS if c.tools):
        go_mod = (HERE / "tools" / component.tools / "go.mod").read_text()
        assert re.search(rf"^(require |\t){re.escape(component.module)} {re.escape(component.version)}( // indirect)?$", go_mod, re.MULTILINE), \
            component.name


def test_kubernetes_staging_modules_are_the_same_release():
    go_mod = (HERE / "tools" / "kubernetes" / "go.mod").read_text()
    staging = re.findall(r"^\s+(k8s\.io/[\w-]+) => \1 (v\S+)$", go_mod, re.MULTILINE)
    assert len(staging) > 30 and {version for _, version in staging} == {"v0.37.2"}


def test_the_operator_deployment_and_local_cluster_run_the_same_buildkit():
    (deployment,) = load_yaml_docs(ROOT / "manifests" / "base" / "30-deployment.yaml")
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert DEFAULT_BUILDKIT_IMAGE == BUILDKIT_IMAGE == env["KILN_BUILDKIT_IMAGE"] == f"moby/buildkit:{BUILDKIT.version}-rootless"


def test_pods_get_no_route_off_the_bridge_but_to_services_and_no_address_translation():
    for node in up.NODES:
        (bridge, loopback) = up.cni_config(node)["plugins"]
        assert (bridge["isGateway"], bridge["ipMasq"], loopback["type"]) == (False, False, "loopback")
        assert bridge["ipam"]["routes"] == [{"dst": up.SERVICE_RANGE, "gw": up.GATEWAY}]  # never a default route
        assert "gateway" not in bridge["ipam"]["ranges"][0][0]


def test_each_node_hands_out_pod_addresses_in_turn_from_thousands_of_its_own():
    """host-local IPAM restarts at its range's start when its last address is outside the range: nodes sharing
    its state would hand a freed address out again at once, to a pod the neighbour caches of other pods do not
    know yet."""
    ipams = [up.cni_config(node)["plugins"][0]["ipam"] for node in up.NODES]
    assert len({ipam["dataDir"] for ipam in ipams}) == len(up.NODES)
    subnet, gateway = ipaddress.ip_network(up.SUBNET), int(ipaddress.ip_address(up.GATEWAY))
    pods = [range(int(ipaddress.ip_address(r["rangeStart"])), int(ipaddress.ip_address(r["rangeEnd"])) + 1)
            for ipam in ipams for (r,) in ipam["ranges"]]
    assert all(len(addresses) > 4000 and gateway < addresses[0] and addresses[-1] < int(subnet.broadcast_address)
               for addresses in pods)
    assert not set(pods[0]) & set(pods[1])


def test_kube_proxy_changes_no_sysctl_and_listens_on_loopback_only():
    config = up.kube_proxy_config(up.STATE / "kube-proxy.kubeconfig")
    assert config["mode"] == "iptables" and config["iptables"]["localhostNodePorts"] is False
    assert config["conntrack"] == {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"}
    assert all(config[key].startswith("127.0.0.1:") for key in ("healthzBindAddress", "metricsBindAddress"))


def test_the_nodes_pull_from_the_local_registry_with_its_login_through_a_credential_provider(tmp_path):
    registry.write_files(tmp_path)
    config = json.loads((tmp_path / "credential-provider" / "config.json").read_text())
    (provider,) = config["providers"]
    assert provider["matchImages"] == [registry.HOST]
    executable = tmp_path / "credential-provider" / "bin" / provider["name"]
    answer = subprocess.run([str(executable)], input='{"image": "10.88.0.3:5000/kiln/operator:1"}', capture_output=True,
                            text=True, check=True)
    assert json.loads(answer.stdout)["auth"] == {registry.HOST: {"username": registry.USER, "password": registry.PASSWORD}}
    hosts = tomllib.loads((tmp_path / "containerd-hosts" / registry.HOST / "hosts.toml").read_text())
    assert hosts["server"] == f"http://{registry.HOST}"
    for node in up.NODES:
        images = tomllib.loads(up.containerd_config(node))["plugins"]["io.containerd.cri.v1.images"]
        assert images["registry"]["config_path"] == str(up.REGISTRY_STATE / "containerd-hosts")


def test_the_nodes_have_their_own_containerd_and_kubelet_ports_and_no_overlapping_pod_addresses():
    configs = [tomllib.loads(up.containerd_config(node)) for node in up.NODES]
    sockets = [c["plugins"]["io.containerd.server.v1.grpc"]["address"] for c in configs]
    assert len(set(sockets)) == len(up.NODES) and all(c["imports"] == [] for c in configs)
    kubelets = [up.kubelet_config(node) for node in up.NODES]
    assert len({(k["port"], k["healthzPort"]) for k in kubelets}) == len(up.NODES)
    assert len({node.pods for node in up.NODES}) == len(up.NODES)
    assert all(k["address"] == up.GATEWAY and k["authorization"]["mode"] == "Webhook" for k in kubelets)


def _sleeper(*arguments: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", *arguments])
    deadline = time.monotonic() + 10
    # Popen returns once its child has begun to exec, which sets up the child's command line a moment later.
    while arguments[-1] not in procs.command_line(process.pid):
        assert time.monotonic() < deadline, "the process never started"
        time.sleep(0.01)
    return process


def test_down_kills_a_process_naming_the_cluster_state_and_spares_one_naming_a_path_that_only_looks_alike(
        tmp_path, monkeypatch):
    state = tmp_path / "kiln-cluster"
    monkeypatch.setattr(up, "STATE", state)
    stray = _sleeper(f"--config={state}/kubelet.yaml")
    decoys = [_sleeper(f"--config={state}-backup-do-not-kill/x.yaml"), _sleeper(f"/elsewhere{state}/x")]
    try:
        up._kill_strays()
        assert stray.wait(timeout=5) == -signal.SIGKILL
        assert [decoy.poll() for decoy in decoys] == [None, None]
    finally:
        for process in (stray, *decoys):
            process.kill()


def test_down_touches_nothing_in_a_directory_up_did_not_make(tmp_path, monkeypatch):
    monkeypatch.setattr(up, "STATE", tmp_path)
    (tmp_path / "precious.db").write_text("data")
    bystander = _sleeper(f"--data-dir={tmp_path}")
    try:
        with pytest.raises(SystemExit, match="was not made by `python3 -m cluster up`"):
            up.down()
        assert (tmp_path / "precious.db").read_text() == "data" and bystander.poll() is None
    finally:
        bystander.kill()
    (tmp_path / up.MARKER).write_text("")
    assert up.made_here(tmp_path) and up.made_here(tmp_path / "absent")


def test_a_pid_file_names_its_process_only_while_it_runs_and_never_across_a_reboot(tmp_path):
    process = _sleeper("--pid-file-test")
    pid_file = tmp_path / "p.pid"
    try:
        pid_file.write_text(procs.record(process.pid))
        assert procs.recorded(pid_file) == process.pid
        pid, start, boot = pid_file.read_text().split()
        pid_file.write_text(f"{pid} {start} {'0' * 8}-before-the-reboot")
        assert procs.recorded(pid_file) is None
        pid_file.write_text(f"{pid} {int(start) - 1} {boot}")  # the same number, another process
        assert procs.recorded(pid_file) is None
    finally:
        process.kill()
        process.wait()
    pid_file.write_text(f"{pid} {start} {boot}")
    assert procs.recorded(pid_file) is None


def test_the_watchdog_kills_a_kubelets_child_that_outlived_its_time_and_spares_younger_ones(tmp_path):
    """A stand-in kubelet with a child that never ends (the emulated kubelet's hung `mount`)."""
    kubelet = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                                "child = subprocess.Popen(['sleep', '300'])\n"
                                "print(child.pid, flush=True)\n"
                                "sys.exit(0 if child.wait() == -9 else 1)"], stdout=subprocess.PIPE, text=True)
    try:
        child = int(kubelet.stdout.readline())
        assert watchdog.kill_stuck(kubelet.pid, seconds=300) == []  # young: a mount at work
        time.sleep(1.1)
        assert watchdog.kill_stuck(kubelet.pid, seconds=1) == [child]
        assert kubelet.wait(timeout=10) == 0  # the kubelet's wait ended: killed
        (tmp_path / "kubelet.pid").write_text(f"{kubelet.pid} 0 {procs.boot_id()}")
        watchdog.watch(tmp_path / "kubelet.pid")  # its kubelet is gone: it returns
    finally:
        kubelet.kill()


def test_a_taken_port_is_named_with_who_holds_it_before_the_cluster_starts(monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    monkeypatch.setattr(up, "PORTS", (port,))
    try:
        with pytest.raises(SystemExit) as refused:
            up.preflight(needs_build=False)
    finally:
        listener.close()
    assert f"port {port} is taken" in str(refused.value)
    if os.geteuid() == 0:  # ss names other users' processes to root only
        assert f"pid={os.getpid()}" in str(refused.value)
    up.preflight(needs_build=False)  # free again


def test_a_machine_without_go_is_told_where_to_get_it_when_the_cache_lacks_a_component(monkeypatch):
    monkeypatch.setattr(up, "PORTS", ())
    monkeypatch.setattr(up.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as refused:
        up.preflight(needs_build=True)
    assert "Go toolchain" in str(refused.value) and "https://go.dev/doc/install" in str(refused.value)
    up.preflight(needs_build=False)  # with every component cached, go is not needed


def test_a_build_without_go_says_where_to_get_it_instead_of_a_traceback(tmp_path):
    from cluster.versions import ROOTLESSKIT

    env = {"PATH": "/nonexistent", "KILN_CACHE": str(tmp_path), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "cluster", "build", ROOTLESSKIT.name], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "https://go.dev/doc/install" in result.stderr


def test_cluster_down_takes_out_the_kube_chains_the_kubelet_and_kube_proxy_leave_and_only_those():
    rules = """-P INPUT ACCEPT
-N KUBE-FIREWALL
-N KUBE-SERVICES
-N MINE
-A INPUT -j KUBE-FIREWALL
-A INPUT -j MINE
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -j DROP
"""
    assert up.kube_chain_commands("filter", rules) == [
        ["-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"],
        ["-t", "filter", "-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
        ["-t", "filter", "-F", "KUBE-FIREWALL"], ["-t", "filter", "-F", "KUBE-SERVICES"],
        ["-t", "filter", "-X", "KUBE-FIREWALL"], ["-t", "filter", "-X", "KUBE-SERVICES"]]
