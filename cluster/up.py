"""`make cluster`: etcd, the control plane, two nodes, kube-proxy and a registry on this machine;
`make cluster-down` stops it all.

The nodes are real kubelets with containerd, runc and Debian's CNI plugins. Pods live on
the bridge kiln0 (10.88.0.0/16), which has no route out of the machine: pods have a route to
the bridge and to the Service range (kube-proxy, on this machine, sends Service addresses to
their endpoints), no default route, no forwarding, no NAT. The API server listens on the
bridge's address, the `kubernetes` Service's endpoint, so that pods reach it as in any cluster.
The second node is an arm64 kubelet (built with GOARCH=arm64) that runs under QEMU user
emulation, so the node and the scheduler see a real arm64 node; its containerd is this
machine's, so its pods run amd64 images (BuildKit then builds arm64 steps under QEMU).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cluster import netns, pki, procs, registry
from cluster.build import NO_GO, all_built, build, build_all
from cluster.images import buildkit_image, pause_image
from cluster.versions import BUILDKIT_IMAGE, CACHE, CONTAINERD, ETCD, KUBERNETES, PAUSE_IMAGE, RUNC, bin_dir

STATE = Path(os.environ.get("KILN_CLUSTER_DIR", "/var/lib/kiln-cluster"))
# Written by up in STATE: down stops processes, unmounts and deletes only in a directory that has it.
MARKER = ".kiln-cluster"
PKI, LOGS, PIDS = STATE / "pki", STATE / "logs", STATE / "pids"
KUBECONFIG = STATE / "admin.kubeconfig"
AUDIT_LOG = LOGS / "audit.log"
BRIDGE, GATEWAY, SUBNET = "kiln0", "10.88.0.1", "10.88.0.0/16"
SERVER = f"https://{GATEWAY}:6443"
SERVICE_RANGE = "10.96.0.0/16"  # kube-proxy routes them on this machine; there is no DNS service
REGISTRY_NETNS = "kiln-registry"
REGISTRY_STATE = STATE / "registry"
CNI_BIN = "/usr/lib/cni"  # Debian's containernetworking-plugins
RUNC_BINARY = str(bin_dir(RUNC) / "runc")  # built from its Go module (cluster/versions.py)
REGISTRY_BINARY = "/usr/bin/docker-registry"  # Debian's docker-registry (the CNCF distribution registry)
CGROUP_V1 = Path("/sys/fs/cgroup")
# Both nodes are usually Ready 20 s after start; once in CI the emulated arm64 kubelet never was.
START_ATTEMPTS = 2


@dataclass(frozen=True)
class Node:
    name: str
    arch: str
    port: int
    healthz_port: int
    # The pod address range on the bridge. Thousands of addresses, handed out in turn (host-local IPAM, its
    # state per node): an address comes back only after the others, long after every pod's neighbour cache has
    # forgotten the MAC it had before. Taken back at once, it is unreachable from pods that talked to its last
    # holder until their stale entry expires (tens of seconds).
    pods: tuple[str, str]

    @property
    def dir(self) -> Path:
        return STATE / "nodes" / self.name

    @property
    def socket(self) -> Path:
        return self.dir / "run" / "containerd.sock"


NODES = (Node("kiln-amd64", "amd64", 10250, 10248, ("10.88.16.1", "10.88.31.254")),
         Node("kiln-arm64", "arm64", 10251, 10249, ("10.88.32.1", "10.88.47.254")))


def log(message: str) -> None:
    print(f"cluster: {message}", file=sys.stderr, flush=True)


# -- processes --

def start(name: str, argv: list[str], env: dict | None = None) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    with (LOGS / f"{name}.log").open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
    (PIDS / f"{name}.pid").write_text(procs.record(process.pid))


def running(name: str) -> bool:
    return procs.recorded(PIDS / f"{name}.pid") is not None


def wait_for(what: str, check, timeout: float, process: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process and not running(process):
            raise SystemExit(f"cluster: {process} exited; its log ends:\n{_tail(LOGS / f'{process}.log')}")
        time.sleep(0.5)
    raise SystemExit(f"cluster: {what} not ready after {timeout:.0f}s"
                     + (f"; {process}'s log ends:\n{_tail(LOGS / f'{process}.log')}" if process else ""))


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def kubectl(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(build(KUBERNETES) / "kubectl"), f"--kubeconfig={KUBECONFIG}", *args],
                          check=check, capture_output=capture, text=True)


# -- configuration files --

def kubeconfig(path: Path, user: str, cert: Path, key: Path, server: str = SERVER, ca: Path = PKI / "ca.crt") -> Path:
    """JSON is YAML: kubeconfigs are written with json, never by pasting text."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kiln-local",
        "clusters": [{"name": "kiln-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "contexts": [{"name": "kiln-local", "context": {"cluster": "kiln-local", "user": user}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
    }, indent=2))
    path.chmod(0o600)
    return path


def restricted_oom_score() -> bool:
    """True when this process may not lower an oom_score_adj (no CAP_SYS_RESOURCE)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return not int(line.split()[1], 16) & (1 << 24)  # CAP_SYS_RESOURCE is capability 24
    return False


def containerd_config(node: Node) -> str:
    """containerd's config: its own root, state and socket per node; CNI from Debian, runc built here."""
    run = node.dir / "run"
    values = {
        "root": str(node.dir / "containerd"), "state": str(run / "containerd"),
        "socket": str(node.socket), "ttrpc": f"{node.socket}.ttrpc",
        "pause": PAUSE_IMAGE, "cni_bin": CNI_BIN, "cni_conf": str(node.dir / "cni"), "runc": RUNC_BINARY,
        "runc_root": str(run / "runc"), "hosts": str(REGISTRY_STATE / "containerd-hosts"),
    }
    q = {k: json.dumps(v) for k, v in values.items()}  # TOML basic strings are JSON strings
    return f"""version = 4
root = {q['root']}
state = {q['state']}
imports = []

[plugins.'io.containerd.server.v1.grpc']
  address = {q['socket']}

[plugins.'io.containerd.server.v1.ttrpc']
  address = {q['ttrpc']}

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = {q['pause']}

[plugins.'io.containerd.cri.v1.images'.registry]
  # The local registry speaks plain HTTP (cluster/registry.py).
  config_path = {q['hosts']}

[plugins.'io.containerd.cri.v1.runtime']
  # Pod network namespaces under this node's state, so cluster-down removes exactly these.
  netns_mounts_under_state_dir = true
  # Root may lack CAP_SYS_RESOURCE (as in this sandbox), and then cannot give the pause container the
  # kubelet's oom_score_adj of -998: runc fails with "failed to update /proc/self/oom_score_adj".
  restrict_oom_score_adj = {'true' if restricted_oom_score() else 'false'}

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = [{q['cni_bin']}]
  conf_dir = {q['cni_conf']}

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = {q['runc']}
  Root = {q['runc_root']}
  SystemdCgroup = false
"""


def cni_config(node: Node) -> dict:
    """A bridge network on kiln0 with this node's address range. No default route, no masquerade: pods reach
    the bridge (registries, each other) and, through this machine, Services; nothing beyond."""
    start_ip, end_ip = node.pods
    return {
        "cniVersion": "1.0.0", "name": "kiln",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": False, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(node.dir / "cni-ipam"),
                      "ranges": [[{"subnet": SUBNET, "rangeStart": start_ip, "rangeEnd": end_ip}]],
                      "routes": [{"dst": SERVICE_RANGE, "gw": GATEWAY}]}},
            {"type": "loopback"},
        ],
    }


def kubelet_config(node: Node) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": GATEWAY, "port": node.port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": node.healthz_port,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(PKI / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{node.name}",
        # This machine mounts cgroup v1 controllers; the kubelet still supports them when asked.
        "failCgroupV1": False,
        "podLogsDir": str(node.dir / "pod-logs"),
        "resolvConf": str(STATE / "resolv.conf"),
        "clusterDomain": "cluster.local",
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2Gi", "imagefs.available": "2Gi"},
        "imageGCHighThresholdPercent": 95, "imageGCLowThresholdPercent": 90,
        "serializeImagePulls": False,
        "maxPods": 60,
    }


# -- steps --

def ensure_binfmt() -> None:
    """QEMU for arm64 (Debian's qemu-user-static): the arm64 kubelet and BuildKit's arm64 steps need it."""
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], check=True)
    if not (binfmt / "qemu-aarch64").exists():
        (binfmt / "register").write_text(Path("/usr/lib/binfmt.d/qemu-aarch64.conf").read_text().strip())


def make_pki() -> dict[str, Path]:
    pki.ca(PKI)
    pki.service_account_key(PKI)
    pki.issue(PKI, "apiserver", "kube-apiserver", ips=("127.0.0.1", GATEWAY, "10.96.0.1"),
              dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"), server=True)
    pki.issue(PKI, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
    configs = {"admin": kubeconfig(KUBECONFIG, "kubernetes-admin", *pki.issue(PKI, "admin", "kubernetes-admin",
                                                                               "system:masters"))}
    for name, user in (("controller-manager", "system:kube-controller-manager"), ("scheduler", "system:kube-scheduler"),
                       ("kube-proxy", "system:kube-proxy")):
        configs[name] = kubeconfig(STATE / f"{name}.kubeconfig", user, *pki.issue(PKI, name, user))
    for node in NODES:
        user = f"system:node:{node.name}"
        configs[node.name] = kubeconfig(STATE / f"{node.name}.kubeconfig", user,
                                        *pki.issue(PKI, f"kubelet-{node.name}", user, "system:nodes"))
    return configs


def audit_policy() -> dict:
    """Who did what, for ServiceAccounts (the operator among them): the e2e tier checks RBAC against it."""
    return {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}]}


def etcd_command(data_dir: Path, client_port: int = 2379, peer_port: int = 2380) -> list[str]:
    """A one-member etcd on 127.0.0.1."""
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [str(build(ETCD) / "etcd"), "--name=kiln", f"--data-dir={data_dir}", f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}", f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kiln={peer}", "--log-level=warn"]


def apiserver_command(pki_dir: Path, etcd_port: int, port: int, audit_policy: Path, audit_log: Path,
                      address: str = "127.0.0.1") -> list[str]:
    """kube-apiserver on address:port, with the certificates and ServiceAccount key in pki_dir: the flags the
    local cluster and the bench's lone API server share."""
    return [
        str(build(KUBERNETES) / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        f"--bind-address={address}", f"--secure-port={port}", f"--service-cluster-ip-range={SERVICE_RANGE}",
        f"--tls-cert-file={pki_dir / 'apiserver.crt'}", f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
        f"--client-ca-file={pki_dir / 'ca.crt'}",
        f"--service-account-key-file={pki_dir / 'sa.pub'}", f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local", "--profiling=false",
        f"--audit-policy-file={audit_policy}", f"--audit-log-path={audit_log}",
    ]


def start_control_plane(configs: dict[str, Path]) -> None:
    kube = build(KUBERNETES)
    (STATE / "audit-policy.json").write_text(json.dumps(audit_policy()))
    start("etcd", etcd_command(STATE / "etcd"))
    wait_for("etcd", lambda: _answers("http://127.0.0.1:2379/health"), 60, "etcd")
    start("kube-apiserver", [
        *apiserver_command(PKI, 2379, 6443, STATE / "audit-policy.json", AUDIT_LOG, GATEWAY),
        f"--advertise-address={GATEWAY}",
        f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
        "--kubelet-preferred-address-types=InternalIP",  # never a DNS lookup of a node name
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
        "--allow-privileged=true",
    ])
    context = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    context.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    wait_for("kube-apiserver", lambda: _answers(f"{SERVER}/readyz", context), 180, "kube-apiserver")
    auth = lambda name: [f"--kubeconfig={configs[name]}", f"--authentication-kubeconfig={configs[name]}",  # noqa: E731
                         f"--authorization-kubeconfig={configs[name]}", "--bind-address=127.0.0.1",
                         "--leader-elect=false"]
    start("kube-controller-manager", [
        str(kube / "kube-controller-manager"), *auth("controller-manager"),
        "--use-service-account-credentials=true",  # each controller under its own identity, as in any cluster
        f"--service-account-private-key-file={PKI / 'sa.key'}", f"--root-ca-file={PKI / 'ca.crt'}",
        f"--cluster-signing-cert-file={PKI / 'ca.crt'}", f"--cluster-signing-key-file={PKI / 'ca.key'}",
    ])
    start("kube-scheduler", [str(kube / "kube-scheduler"), *auth("scheduler")])
    insecure = ssl._create_unverified_context()  # their serving certificates are self-signed
    wait_for("kube-controller-manager", lambda: _answers("https://127.0.0.1:10257/healthz", insecure), 120,
             "kube-controller-manager")
    wait_for("kube-scheduler", lambda: _answers("https://127.0.0.1:10259/healthz", insecure), 120, "kube-scheduler")


def kube_proxy_config(kubeconfig_path: Path) -> dict:
    """One kube-proxy for the machine (both nodes share its network), in iptables mode. It leaves the kernel's
    conntrack settings and route_localnet as they are: root here may not change every sysctl, and nothing here
    needs NodePorts on localhost."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig_path)}, "hostnameOverride": NODES[0].name,
        "mode": "iptables", "clusterCIDR": SUBNET, "nodePortAddresses": ["primary"],
        "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10262",
        "iptables": {"localhostNodePorts": False},
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def start_kube_proxy(configs: dict[str, Path]) -> None:
    (STATE / "kube-proxy.json").write_text(json.dumps(kube_proxy_config(configs["kube-proxy"]), indent=2))
    start("kube-proxy", [str(build(KUBERNETES) / "kube-proxy"), f"--config={STATE / 'kube-proxy.json'}"])
    wait_for("kube-proxy", lambda: _answers("http://127.0.0.1:10256/livez"), 60, "kube-proxy")


def start_registry() -> None:
    """The local registry on its own host on the bridge (its busybox is pushed once it answers: registry.py)."""
    host = netns.create(REGISTRY_NETNS, BRIDGE, registry.ADDRESS, 16)
    start("registry", host.command([REGISTRY_BINARY, "serve", str(REGISTRY_STATE / "config.yml")]))
    wait_for(f"the registry at {registry.HOST}", registry.answers, 30, "registry")


def make_bridge() -> None:
    """kiln0 holds the pods of both nodes and the registry's host; the API server and the kubelets listen on its
    address. Service addresses are routed onto it too: kube-proxy rewrites them to their endpoints there, and
    one it has not (yet) rewritten stays on the bridge instead of taking this machine's default route."""
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0:
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"{GATEWAY}/16", "dev", BRIDGE], check=True)
    subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
    subprocess.run(["ip", "route", "replace", SERVICE_RANGE, "dev", BRIDGE, "src", GATEWAY], check=True)


def _cgroup_roots(node: Node) -> list[Path]:
    """The node's cgroup in every mounted v1 hierarchy (the kubelet's cgroupRoot must exist)."""
    return [hierarchy / node.name for hierarchy in sorted(CGROUP_V1.iterdir())
            if hierarchy.is_dir() and hierarchy.name != "unified" and (hierarchy / "cgroup.procs").exists()]


def start_node(node: Node, configs: dict[str, Path], archives: list[Path]) -> None:
    for sub in ("run", "cni", "kubelet", "pod-logs"):
        (node.dir / sub).mkdir(parents=True, exist_ok=True)
    (node.dir / "containerd.toml").write_text(containerd_config(node))
    (node.dir / "cni" / "10-kiln.conflist").write_text(json.dumps(cni_config(node), indent=2))
    (node.dir / "kubelet.yaml").write_text(json.dumps(kubelet_config(node), indent=2))
    for cgroup in _cgroup_roots(node):
        cgroup.mkdir(exist_ok=True)
        if cgroup.parent.name == "cpuset":  # a new cpuset starts empty: give it its parent's CPUs and memory
            for name in ("cpuset.cpus", "cpuset.mems"):
                (cgroup / name).write_text((cgroup.parent / name).read_text())
    containerd = build(CONTAINERD)
    path = f"{containerd}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"  # its shim, found on PATH
    start(f"containerd-{node.name}", [str(containerd / "containerd"), f"--config={node.dir / 'containerd.toml'}"],
          env={"PATH": path})
    ctr = [str(containerd / "ctr"), f"--address={node.socket}", "--namespace=k8s.io"]
    wait_for(f"containerd of {node.name}",
             lambda: subprocess.run([*ctr, "version"], capture_output=True).returncode == 0, 60, f"containerd-{node.name}")
    for archive in archives:  # the node has these images without pulling from anywhere
        subprocess.run([*ctr, "images", "import", "--platform=linux/amd64", str(archive)], check=True,
                       capture_output=True)
    kubelet = build(KUBERNETES, node.arch, ("cmd/kubelet",)) / "kubelet"
    provider = REGISTRY_STATE / "credential-provider"
    start(f"kubelet-{node.name}", [
        str(kubelet), f"--config={node.dir / 'kubelet.yaml'}", f"--kubeconfig={configs[node.name]}",
        f"--root-dir={node.dir / 'kubelet'}", f"--hostname-override={node.name}", f"--node-ip={GATEWAY}",
        f"--image-credential-provider-config={provider / 'config.json'}",
        f"--image-credential-provider-bin-dir={provider / 'bin'}",
    ])
    start(f"watchdog-{node.name}", [sys.executable, "-m", "cluster", "watchdog", str(PIDS / f"kubelet-{node.name}.pid")],
          env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})


def node_ready(name: str) -> bool:
    found = kubectl("get", "node", name, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
    return found.stdout.strip() == "True"


# Every TCP port the cluster's processes listen on, on 127.0.0.1 or the bridge's address.
PORTS = (2379, 2380, 6443, 10256, 10257, 10259, 10262, *(p for n in NODES for p in (n.port, n.healthz_port)))


def taken(port: int) -> str | None:
    """Who listens on `port` (on any address), as `ss` says; None when nobody does."""
    probe = socket.socket()
    try:
        probe.bind(("0.0.0.0", port))  # fails while anyone listens on the port, on any of this machine's addresses
        return None
    except OSError:
        return subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout.strip() or "?"
    finally:
        probe.close()


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("cluster: the local cluster needs root: it starts node agents and makes a network bridge "
                         "(run it as root, or `make cluster` with sudo)")


def preflight(needs_build: bool) -> None:
    """What `make cluster` needs and this machine lacks, each said with how to get it, before anything starts."""
    problems = []
    if needs_build and not shutil.which("go"):
        problems.append(f"{NO_GO}, and {CACHE} does not hold them all")
    problems += [f"port {port} is taken: {who}" for port in PORTS if (who := taken(port))]
    if problems:
        raise SystemExit("cluster: cannot start the local cluster:\n" + "\n".join(f"  - {p}" for p in problems))


def is_up() -> bool:
    """Every process of the cluster runs and both nodes are Ready."""
    names = ["etcd", "kube-apiserver", "kube-proxy", "registry", *(f"kubelet-{n.name}" for n in NODES)]
    return all(running(name) for name in names) and all(node_ready(n.name) for n in NODES)


def up() -> Path:
    """Start the cluster (building what the cache lacks); returns the admin kubeconfig."""
    require_root()
    if is_up():
        log(f"already running; KUBECONFIG={KUBECONFIG}")
        return KUBECONFIG
    started = time.monotonic()
    down(quiet=True)  # a half-started cluster is cleared first
    preflight(needs_build=not all_built())
    build_all()
    archives = [pause_image(), buildkit_image()]
    ensure_binfmt()
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            _start(archives)
            break
        except SystemExit as failed:
            down(quiet=True)  # a failed start leaves nothing running
            if attempt == START_ATTEMPTS:
                raise
            log(f"{failed}\nstarting again (attempt {attempt + 1} of {START_ATTEMPTS})")
    log(f"up in {time.monotonic() - started:.0f}s: nodes {', '.join(n.name for n in NODES)} with image {BUILDKIT_IMAGE}; "
        f"registry {registry.HOST} (user {registry.USER}) with {registry.BUSYBOX}")
    log(f"export KUBECONFIG={KUBECONFIG}")
    return KUBECONFIG


def _start(archives: list[Path]) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / MARKER).write_text("made by kiln's `python3 -m cluster up`; `down` deletes this directory\n")
    (STATE / "resolv.conf").write_text("# kiln's local cluster has no DNS service\n")
    registry.write_files(REGISTRY_STATE)  # containerd and the kubelets read theirs at start
    configs = make_pki()
    make_bridge()
    start_control_plane(configs)
    start_registry()
    for node in NODES:
        start_node(node, configs, archives)
    registry.push_busybox()
    for node in NODES:
        wait_for(f"node {node.name} Ready", lambda n=node: node_ready(n.name), 240, f"kubelet-{node.name}")
    start_kube_proxy(configs)  # after its node exists: it takes the node's address once, and exits when it changes


# -- cluster-down --

def _stop(name: str, grace: float = 10.0) -> None:
    pid_file = PIDS / f"{name}.pid"
    pid = procs.recorded(pid_file)
    if pid is None:  # gone, or a pid file from before a reboot: nothing of ours to stop
        pid_file.unlink(missing_ok=True)
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            continue
        break
    pid_file.unlink(missing_ok=True)


def _processes_mentioning(path: str) -> list[int]:
    found = []
    for pid in procs.pids():
        try:
            if procs.mentions(pid, path):
                found.append(pid)
        except OSError:
            continue
    return found


def _remove_containers(node: Node) -> None:
    """Every container the node's runc still runs, then the containerd shims that watched them."""
    root = node.dir / "run" / "runc" / "k8s.io"
    if root.exists():
        listed = subprocess.run([RUNC_BINARY, f"--root={root}", "list", "-q"], capture_output=True, text=True)
        for container in listed.stdout.split():
            subprocess.run([RUNC_BINARY, f"--root={root}", "delete", "--force", container], capture_output=True)
    for pid in _processes_mentioning(str(node.socket)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _unmount_below(*roots: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted(mounts, key=len, reverse=True):
        point = mount.replace("\\040", " ")
        if any(point == str(root) or point.startswith(f"{root}/") for root in roots):
            subprocess.run(["umount", "-l", point], capture_output=True)


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(procs.stat_fields(pid)[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def _kill_strays() -> None:
    """Any process still naming the cluster's state: one whose pid file is gone, or one that outlived
    SIGKILL in _stop while blocked in the kernel (seen once with the emulated arm64 kubelet)."""
    deadline = time.monotonic() + 30
    while strays := set(_processes_mentioning(str(STATE))) - _ancestors():
        if time.monotonic() > deadline:
            raise SystemExit(f"cluster: down: still running after SIGKILL: pids {sorted(strays)}")
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def kube_chain_commands(table: str, rules: str) -> list[list[str]]:
    """The arguments that take the KUBE-* chains out of one table, given its `iptables -S`: the jumps into them
    from the built-in chains first, then the chains themselves. The kubelet makes some (KUBE-FIREWALL, its canaries)
    that kube-proxy's cleanup leaves."""
    jumps, chains = [], []
    for line in rules.splitlines():
        words = shlex.split(line)
        if words[:1] == ["-A"] and not words[1].startswith("KUBE-") and "-j" in words \
                and words[words.index("-j") + 1].startswith("KUBE-"):
            jumps.append(["-t", table, "-D", *words[1:]])
        elif words[:1] == ["-N"] and words[1].startswith("KUBE-"):
            chains.append(words[1])
    # Every chain is flushed before any is deleted: one may still jump to another.
    return jumps + [["-t", table, "-F", c] for c in chains] + [["-t", table, "-X", c] for c in chains]


def remove_kube_chains() -> None:
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            listed = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True)
            for args in kube_chain_commands(table, listed.stdout):
                subprocess.run([tool, *args], capture_output=True)


def made_here(state: Path) -> bool:
    """Is `state` a directory up made (or one that is empty or not there): one down may clear?"""
    return not state.exists() or (state / MARKER).is_file() or (state.is_dir() and not any(state.iterdir()))


def down(quiet: bool = False) -> None:
    """Stop every process the cluster started, remove its containers, mounts, network and state."""
    require_root()
    if not made_here(STATE):
        raise SystemExit(f"cluster: {STATE} was not made by `python3 -m cluster up` (it has no {MARKER}): nothing "
                         "in it is stopped or deleted; point KILN_CLUSTER_DIR at the cluster's own directory")
    for node in NODES:
        _stop(f"watchdog-{node.name}")
        _stop(f"kubelet-{node.name}")
    for node in NODES:
        _remove_containers(node)
        _stop(f"containerd-{node.name}")
    for name in ("registry", "kube-proxy", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
        _stop(name)
    netns.delete(REGISTRY_NETNS)
    proxy = bin_dir(KUBERNETES) / "kube-proxy"
    if proxy.exists():  # its Service rules, in every mode it knows
        subprocess.run([str(proxy), "--cleanup"], capture_output=True)
    remove_kube_chains()
    _kill_strays()
    _unmount_below(STATE)
    for node in NODES:
        for cgroup in _cgroup_roots(node):
            for directory in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                                    reverse=True) + [cgroup]:
                try:
                    directory.rmdir()
                except OSError:
                    pass
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode == 0:
        subprocess.run(["ip", "link", "delete", BRIDGE], check=True)
    shutil.rmtree(STATE, ignore_errors=True)
    if not quiet:
        log("down: nothing of the cluster is running")
