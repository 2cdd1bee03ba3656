"""kiln's own CPU when a build starts, in-process: no API server, no kopf, no emulator noise.

The reconcile of a new ImageBuild runs against watch caches as kopf fills them (a Ready login and its Secret),
and an API client that answers every request at once. Beside it, what any operator pays for the same build:
parsing and rendering it (bench/kopf_floor.py does that much). The difference is kiln's deciding: logins
resolved, the push check answered from its cache, the status written. It has no emulator or other process
in it, but on a shared VM it still moves from run to run (1.2x to 2.3x on one day), as the others do.
"""
import logging
import statistics
import time

from kiln.build.platforms import build_plan
from kiln.build.render import render_build
from kiln.clients import registry, watch_cache
from kiln.controller.builds import reconcile_build
from kiln.controller.runtime import Runtime
from kiln.spec.parse import parse_image_build
from kiln.spec.settings import Settings

from bare_client import image_build

NAMESPACE, BUILDS, WARM = "team", 500, 20
IMAGE = "registry.example:5000/team/app"
LOGIN = {"apiVersion": "kiln.dev/v1alpha1", "kind": "RegistryLogin",
         "metadata": {"name": "reg", "namespace": NAMESPACE, "uid": "login", "generation": 1, "resourceVersion": "5"},
         "spec": {"server": "registry.example:5000", "secretRef": {"name": "reg-creds"}, "insecure": True},
         "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True", "reason": "Verified"}]}}
SECRET = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
          "metadata": {"name": "reg-creds", "namespace": NAMESPACE, "resourceVersion": "3",
                       "labels": {"kiln.dev/registry-login": "true"}},
          "data": {"username": "YWxpY2U=", "password": "YWxpY2UtcHc="}}


class Instant:
    """An API server that answers at once, and notes when each create arrived."""

    def __init__(self):
        self.creates: list[tuple[str, float]] = []

    async def create(self, url: str, obj: dict) -> bool:
        self.creates.append((obj["kind"], time.perf_counter()))
        return True

    async def patch_status(self, url: str, patch: dict) -> None:
        return None


def _build(i: int) -> dict:
    obj = image_build(NAMESPACE, f"app-{i}", IMAGE)
    obj["metadata"].update(uid=f"uid-{i}", generation=1, resourceVersion=str(100 + i),
                           creationTimestamp="2026-11-29T10:00:00Z")
    return obj


async def _reconciles(runtime: Runtime, builds: list[dict]) -> tuple[list[float], list[float]]:
    """Per build: µs from the reconcile's start to its Secret's create, and to its end."""
    to_secret, whole = [], []
    for obj in builds:
        name = obj["metadata"]["name"]
        runtime.cache.saw_build(obj)
        runtime.kube.creates.clear()
        start = time.perf_counter()
        await reconcile_build(runtime, NAMESPACE, name, logging.getLogger("bench"))
        end = time.perf_counter()
        assert [kind for kind, _ in runtime.kube.creates] == ["Secret", "Job"]
        to_secret.append((runtime.kube.creates[0][1] - start) * 1e6)
        whole.append((end - start) * 1e6)
    return to_secret, whole


async def test_kilns_own_cpu_to_start_a_build_beside_parsing_and_rendering_it(figures, monkeypatch):
    async def allowed(self, repository):  # the registry's answer, cached per repository after the first build
        return None

    monkeypatch.setattr(registry.RegistryClient, "check_push", allowed)
    runtime = Runtime(Instant(), Settings())
    runtime.cache.indexes = {"logins_by_namespace": {NAMESPACE: [watch_cache.body(LOGIN)]},
                             "jobs_by_build": {}, "pods_by_build": {},
                             "secrets_by_name": {(NAMESPACE, "reg-creds"): [watch_cache.body(SECRET)]}}
    builds = [_build(i) for i in range(WARM + BUILDS)]
    try:
        await _reconciles(runtime, builds[:WARM])
        to_secret, whole = await _reconciles(runtime, builds[WARM:])
    finally:
        await runtime.registries.close()
    floor = []
    for obj in [_build(i) for i in range(len(builds), len(builds) + BUILDS)]:  # specs it has not parsed yet
        start = time.perf_counter()
        spec = parse_image_build(obj)
        render_build(spec, [], build_plan(spec), Settings())
        floor.append((time.perf_counter() - start) * 1e6)
    kiln, bare = statistics.median(to_secret), statistics.median(floor)
    figures.record("reconcile of a build start, to its Secret's create", round(kiln),
                   "µs (median, in-process, API answering at once); bare: parse and render it", baseline=round(bare),
                   goal=f"(is {kiln / bare:.1f}x)", whole_reconcile_us=round(statistics.median(whole)))
