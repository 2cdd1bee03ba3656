"""A real API server for the bench: etcd and kube-apiserver, the pinned builds the local cluster uses, alone.

No controller, scheduler or node: what is measured is how soon a build's Job is created, which needs only
the API server. When the server saw each ImageBuild and each build Job created comes from its audit log
(the time it received the request, to the microsecond), so the figures are the server's, as the emulator's
are in bench/test_scale.py.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cluster import pki, up

# The creates the latency figures need: ImageBuilds by name; Jobs with their body, for the build label.
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"], "rules": [
    {"level": "Request", "verbs": ["create"], "resources": [{"group": "batch", "resources": ["jobs"]}]},
    {"level": "Metadata", "verbs": ["create"], "resources": [{"group": "kiln.dev", "resources": ["imagebuilds"]}]},
    {"level": "None"}]}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class AuditLog:
    """When the server received each ImageBuild's create and the first create of a Job labelled with it:
    (namespace, name) -> seconds since the epoch, read from the audit log as it grows."""
    path: Path
    build_created: dict = field(default_factory=dict)
    job_created: dict = field(default_factory=dict)
    _read: int = 0

    def read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as log:
            log.seek(self._read)
            for line in log:
                if not line.endswith(b"\n"):  # still being written: read it whole next time
                    break
                self._read += len(line)
                self._note(json.loads(line))

    def _note(self, event: dict) -> None:
        if event.get("stage") != "ResponseComplete" or event["responseStatus"].get("code") != 201:
            return
        ref = event["objectRef"]
        when = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
        if ref["resource"] == "imagebuilds":
            self.build_created[(ref["namespace"], ref["name"])] = when
        elif ref["resource"] == "jobs":
            build = event["requestObject"]["metadata"].get("labels", {}).get("kiln.dev/imagebuild")
            self.job_created.setdefault((ref["namespace"], build), when)


@dataclass
class ApiServer:
    url: str
    kubeconfig: Path
    client_tls: dict[str, str]  # BENCH_CA, BENCH_CERT, BENCH_KEY: how bench/bare_client.py reaches it
    audit: AuditLog

    @cached_property
    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.client_tls["BENCH_CA"])
        context.load_cert_chain(self.client_tls["BENCH_CERT"], self.client_tls["BENCH_KEY"])
        return context

    def request(self, method: str, path: str, body: dict | None = None) -> bytes:
        request = urllib.request.Request(f"{self.url}{path}", method=method, headers={"Content-Type": "application/json"},
                                         data=json.dumps(body).encode() if body is not None else None)
        with urllib.request.urlopen(request, context=self._tls, timeout=30) as response:
            return response.read()


@contextlib.contextmanager
def api_server(workdir: Path):
    """etcd and kube-apiserver on free ports of 127.0.0.1, their state in workdir; stopped on leaving."""
    certs = workdir / "pki"
    pki.ca(certs)
    pki.service_account_key(certs)
    pki.issue(certs, "apiserver", "kube-apiserver", ips=("127.0.0.1",), dns=("localhost",), server=True)
    cert, key = pki.issue(certs, "admin", "bench-admin", "system:masters")
    policy, audit = workdir / "audit-policy.json", workdir / "audit.log"
    policy.write_text(json.dumps(AUDIT_POLICY))
    etcd_port, port = _free_port(), _free_port()
    server = ApiServer(f"https://127.0.0.1:{port}",
                       up.kubeconfig(workdir / "kubeconfig", "bench-admin", cert, key, f"https://127.0.0.1:{port}",
                                     certs / "ca.crt"),
                       {"BENCH_CA": str(certs / "ca.crt"), "BENCH_CERT": str(cert), "BENCH_KEY": str(key)},
                       AuditLog(audit))
    processes = []
    try:
        for name, command in (
                ("etcd", up.etcd_command(workdir / "etcd", etcd_port, _free_port())),
                ("kube-apiserver", [*up.apiserver_command(certs, etcd_port, port, policy, audit),
                                    # 127.0.0.1 is no address to publish as the kubernetes Service's endpoint:
                                    # with nothing to reach it there, no endpoint is published at all
                                    "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
                                    "--authorization-mode=RBAC"])):
            with (workdir / f"{name}.log").open("wb") as log:
                processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        _wait_ready(server, processes)
        yield server
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_ready(server: ApiServer, processes: list[subprocess.Popen], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise RuntimeError("etcd or kube-apiserver exited: see their logs beside the bench's audit log")
        try:
            server.request("GET", "/readyz")
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"kube-apiserver not ready after {timeout:.0f}s")
