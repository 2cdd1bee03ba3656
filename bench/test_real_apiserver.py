"""kiln against a real API server, side by side with the bare client and kopf alone in the same run.

The emulator of bench/test_scale.py is one Python thread: at N = 100 it is the bottleneck for every client,
and what a client does beyond its writes hides behind it. Here etcd and kube-apiserver (the pinned builds,
bench/apiserver.py) serve the three clients of bench/test_scale.py in turns, with a fourth: kopf alone that
also watches its Jobs (bench/kopf_floor.py), which kiln must do and kopf alone does not. The figure is the same:
from the server's receipt of the first ImageBuild's create to that of the last build Job's, as a ratio to
the bare client's, the median of a few runs. No Job controller runs, so a turn's ImageBuilds, Jobs and
Secrets are deleted before the next turn (their pods would never come, and kiln would look into them).
Every client presents the same client certificate (system:masters): no API Priority and Fairness queue
holds one back and not another.
"""
import asyncio
import json
import os
import pathlib
import statistics
import urllib.error
import urllib.parse

import yaml

from apiserver import api_server
from kubefake import eventually
from processes import BENCH, FLOOR, KILN, client, cpu_seconds, latency, record_latency, start, stop, turns
from registries import start_htpasswd_registry

# The three clients of bench/test_scale.py, and kopf alone watching its Jobs too, as kiln must to follow them.
NAMESPACES = {"bare": "bare-bench", "create": "kiln-bench", "floor": "floor-bench", "floor-jobs": "floor-jobs-bench"}
FLOORS = {"floor": ("kopf alone", "kopf and the bare writes on its events"),
          "floor-jobs": ("kopf + Job watch", "kopf alone, watching its Jobs too (a do-nothing handler)")}
SIZES = {1: 9, 100: 9, 500: 3}  # N -> runs (the median is the figure): single runs range widely
CRDS = pathlib.Path(__file__).parent.parent / "crds"
BUILT_BY_KILN = urllib.parse.urlencode({"labelSelector": "app.kubernetes.io/managed-by=kiln"})


def _install(server) -> None:
    """kiln's CRDs; a namespace per client; in kiln's, the Secret of a RegistryLogin."""
    for crd in ("kiln.dev_imagebuilds.yaml", "kiln.dev_registrylogins.yaml"):
        server.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                       yaml.safe_load((CRDS / crd).read_text()))
    for namespace in ("warm-up", *NAMESPACES.values()):
        server.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    server.request("POST", f"/api/v1/namespaces/{NAMESPACES['create']}/secrets", {
        "type": "kubernetes.io/basic-auth", "stringData": {"username": "alice", "password": "alice-pw"},
        "metadata": {"name": "reg-creds", "labels": {"kiln.dev/registry-login": "true"}}})


def _login_created(server, registry_host: str) -> bool:
    """The RegistryLogin created; False while its new CRD's kind is not served yet."""
    try:
        server.request("POST", f"/apis/kiln.dev/v1alpha1/namespaces/{NAMESPACES['create']}/registrylogins", {
            "apiVersion": "kiln.dev/v1alpha1", "kind": "RegistryLogin", "metadata": {"name": "reg"},
            "spec": {"server": registry_host, "secretRef": {"name": "reg-creds"}, "insecure": True}})
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise
        return False
    return True


def _login_ready(server) -> bool:
    login = json.loads(server.request("GET", f"/apis/kiln.dev/v1alpha1/namespaces/{NAMESPACES['create']}/registrylogins/reg"))
    return any(c["type"] == "Ready" and c["status"] == "True" for c in login.get("status", {}).get("conditions", []))


async def _clear(server, namespace: str, count: int) -> None:
    """The turn's objects deleted, once the trailing writes (status patches, events) are in, and the echo of
    their deletion past."""
    await asyncio.sleep(0.5 + count / 100)
    for collection in ("/apis/kiln.dev/v1alpha1/namespaces/{}/imagebuilds", "/apis/batch/v1/namespaces/{}/jobs",
                       "/api/v1/namespaces/{}/secrets?" + BUILT_BY_KILN):
        server.request("DELETE", collection.format(namespace))
    await asyncio.sleep(1 + count / 50)


async def test_create_to_job_latency_against_a_real_api_server_beside_a_bare_client(tmp_path, figures):
    registry = start_htpasswd_registry(tmp_path / "registry", {"alice": "alice-pw"})
    image = f"{registry.host}/team/app"
    operators = {}
    try:
        with api_server(tmp_path / "apiserver") as server:
            _install(server)
            await eventually(lambda: _login_created(server, registry.host), timeout=60, interval=0.5)
            env = {**os.environ, "KUBECONFIG": str(server.kubeconfig), "KILN_METRICS_PORT": "0",
                   "KILN_METRICS_ADDRESS": "127.0.0.1"}
            clients = {**os.environ, **server.client_tls}
            operators["create"] = start(KILN, NAMESPACES["create"], env, tmp_path / "operator.log")
            for mode, jobs in (("floor", ""), ("floor-jobs", "1")):
                operators[mode] = start(FLOOR, NAMESPACES[mode], {
                    **env, **server.client_tls, "KOPF_FLOOR_SERVER": server.url, "KOPF_FLOOR_WATCH_JOBS": jobs,
                    "PYTHONPATH": str(BENCH)}, tmp_path / f"{mode}.log")
            await eventually(lambda: _login_ready(server), timeout=60, interval=0.5)
            # Warm: the server's first writes of each kind, and kiln's push check of the repository.
            async with client("bare", server.url, "warm-up", 1, image, "w", clients):
                pass
            async with client("create", server.url, NAMESPACES["create"], 1, image, "first", clients):
                await _seen(server, NAMESPACES["create"], "first", 1)
            await _clear(server, NAMESPACES["create"], 1)
            for count, repeats in SIZES.items():
                runs = []
                for run in range(repeats):
                    measured = {}
                    for mode in turns(run, tuple(NAMESPACES)):
                        namespace, prefix = NAMESPACES[mode], f"r{run}n{count}"
                        process = operators.get(mode)
                        cpu = cpu_seconds(process.pid) if process else 0
                        async with client("bare" if mode == "bare" else "create", server.url, namespace, count, image,
                                          prefix, clients):
                            seen = await _seen(server, namespace, prefix, count)
                        measured[mode] = (*seen, (cpu_seconds(process.pid) - cpu) / count if process else None)
                        await _clear(server, namespace, count)
                    runs.append(measured)
                record_latency(figures, f"real API server, N={count}", runs, FLOORS,
                               operator_cpu_ms_per_build={mode: round(statistics.median(r[mode][2] for r in runs) * 1000, 1)
                                                          for mode in operators})
    finally:
        for process in operators.values():
            stop(process)
        registry.stop()


async def _seen(server, namespace: str, prefix: str, count: int) -> tuple[float, float]:
    def seen():
        server.audit.read()
        return latency(server.audit, namespace, prefix, count)

    return await eventually(seen, timeout=600, interval=0.05)
