"""Create N ImageBuilds at once, alone or with what a bare client would write for each (bench/test_scale.py).

  python bench/bare_client.py create SERVER NAMESPACE N IMAGE PREFIX   only the ImageBuilds PREFIX-0 ... PREFIX-(N-1):
      the operator does the rest
  python bench/bare_client.py bare   SERVER NAMESPACE N IMAGE PREFIX   each ImageBuild, then at once its Secret and Job
      (rendered by kiln's own pure functions), a status patch and an event: the writes kiln makes for a build
      that starts, with no watch, no cache and no registry check — the floor kiln's latency is compared with.

Against a real API server (bench/test_real_apiserver.py), BENCH_CA, BENCH_CERT and BENCH_KEY name its CA and
the client certificate to present.

Runs as its own process, as the operator does, so that neither shares the emulator's CPU time. Once its writes
are answered it says "written" and stays until the bench closes its stdin: its exit (the interpreter's teardown,
some milliseconds of CPU) would otherwise fall inside kiln's measured time and not inside its own, on a machine
of two cores where the emulator and the operator run too.
"""
import asyncio
import os
import ssl
import sys

import aiohttp

from kiln.build.platforms import build_plan
from kiln.build.render import render_build
from kiln.clients.kube import CONNECTIONS, IDLE_CONNECTION_SECONDS
from kiln.spec.parse import parse_image_build
from kiln.spec.settings import Settings

SETTINGS = Settings()


def image_build(namespace: str, name: str, image: str) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": name, "namespace": namespace},
            "spec": {"registryLogins": ["reg"], "source": {"git": {"url": "https://git.example/app.git"}},
                     "output": {"image": image, "tags": [name]}, "cache": {"type": "none"}}}


def session(server: str, agent: str) -> aiohttp.ClientSession:
    """Connections as many and kept open as long as kiln's: kopf alone (bench/kopf_floor.py) writes through this."""
    context = None
    if "BENCH_CA" in os.environ:
        context = ssl.create_default_context(cafile=os.environ["BENCH_CA"])
        context.load_cert_chain(os.environ["BENCH_CERT"], os.environ["BENCH_KEY"])
    return aiohttp.ClientSession(server, headers={"User-Agent": agent},
                                 connector=aiohttp.TCPConnector(limit=CONNECTIONS, keepalive_timeout=IDLE_CONNECTION_SECONDS,
                                                                ssl=context or True))


def _collection(obj: dict, namespace: str) -> str:
    group = "/api/v1" if obj["apiVersion"] == "v1" else f"/apis/{obj['apiVersion']}"
    return f"{group}/namespaces/{namespace}/{obj['kind'].lower()}s"


async def _post(session: aiohttp.ClientSession, path: str, body: dict) -> dict:
    async with session.post(path, json=body) as response:
        response.raise_for_status()
        return await response.json()


async def one(session: aiohttp.ClientSession, mode: str, namespace: str, name: str, image: str) -> None:
    builds = f"/apis/kiln.dev/v1alpha1/namespaces/{namespace}/imagebuilds"
    created = await _post(session, builds, image_build(namespace, name, image))
    if mode == "bare":
        await writes(session, created)


async def writes(session: aiohttp.ClientSession, created: dict) -> None:
    """What kiln writes for a build that starts: its Secret and Job, a status patch and an event."""
    namespace, name = created["metadata"]["namespace"], created["metadata"]["name"]
    builds = f"/apis/kiln.dev/v1alpha1/namespaces/{namespace}/imagebuilds"
    spec = parse_image_build(created)
    for obj in render_build(spec, [], build_plan(spec), SETTINGS):
        await _post(session, _collection(obj, namespace), obj)
    async with session.patch(f"{builds}/{name}/status", json={"status": {"phase": "Building"}},
                             headers={"Content-Type": "application/merge-patch+json"}) as response:
        response.raise_for_status()
    await _post(session, f"/api/v1/namespaces/{namespace}/events", {
        "apiVersion": "v1", "kind": "Event", "metadata": {"generateName": f"{name}.", "namespace": namespace},
        "involvedObject": {"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "name": name, "namespace": namespace,
                           "uid": created["metadata"]["uid"]},
        "reason": "BuildStarted", "message": "build started", "type": "Normal", "source": {"component": "bench"}})


async def main(mode: str, server: str, namespace: str, count: int, image: str, prefix: str) -> None:
    async with session(server, f"bench-{mode}") as client:
        # Warm, as a running controller is: a connection open, the renderer's first call behind it.
        spec = parse_image_build({**image_build(namespace, "warm-up", image), "metadata": {
            "name": "warm-up", "namespace": namespace, "uid": "0", "generation": 1}})
        render_build(spec, [], build_plan(spec), SETTINGS)
        async with client.get("/version") as response:
            await response.read()
        await asyncio.gather(*(one(client, mode, namespace, f"{prefix}-{i}", image) for i in range(count)))


if __name__ == "__main__":
    mode, server, namespace, count, image, prefix = sys.argv[1:]
    asyncio.run(main(mode, server, namespace, int(count), image, prefix))
    print("written", flush=True)
    sys.stdin.read()
