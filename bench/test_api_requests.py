"""API requests one build costs, by verb, through the real operator against the emulator.

One login, one ImageBuild, its pod run to success by the test (playing the Job controller and the
kubelet), counted from the ImageBuild's creation until its status says Succeeded, and then over one
idle minute of resync (KILN_RESYNC_INTERVAL=1 here, so sixty rounds). Watch streams are the
operator's standing cost, not a build's, and are not counted.
"""
import asyncio
import collections
import json

import pytest

from benchfake import BenchFake
from kubefake import Cluster, declare_resources, eventually, kubeconfig, operator
from registries import start_htpasswd_registry

pytestmark = [pytest.mark.kmock(cls=BenchFake)]


def _report(title: str, counts: collections.Counter) -> dict:
    by_verb = collections.Counter()
    for (verb, _), n in counts.items():
        by_verb[verb] += n
    print(f"\n{title}: {sum(counts.values())} requests ({', '.join(f'{v} {n}' for v, n in sorted(by_verb.items()))})")
    for (verb, resource), n in sorted(counts.items(), key=lambda item: -item[1]):
        print(f"  {n:4d}  {verb:6s} {resource}")
    return {"total": sum(counts.values()), "by_verb": dict(by_verb),
            "by_request": {f"{v} {r}": n for (v, r), n in sorted(counts.items())}}


async def test_api_requests_in_the_life_of_one_build_and_in_an_idle_minute(kmock, tmp_path, monkeypatch, figures):
    declare_resources(kmock)
    monkeypatch.setenv("KUBECONFIG", kubeconfig(kmock, tmp_path / "kubeconfig"))
    monkeypatch.setenv("KILN_RESYNC_INTERVAL", "1")
    registry = start_htpasswd_registry(tmp_path / "registry", {"alice": "alice-pw"})
    cluster = Cluster(kmock)
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "reg-creds", "labels": {"kiln.dev/registry-login": "true"}},
              "type": "kubernetes.io/basic-auth", "stringData": {}, "data": {"username": "YWxpY2U=", "password": "YWxpY2UtcHc="}}
    login = {"apiVersion": "kiln.dev/v1alpha1", "kind": "RegistryLogin", "metadata": {"name": "reg"},
             "spec": {"server": registry.host, "secretRef": {"name": "reg-creds"}, "insecure": True}}
    build = {"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "app"},
             "spec": {"registryLogins": ["reg"], "source": {"git": {"url": "https://git.example/app.git"}},
                      "output": {"image": f"{registry.host}/team/app", "tags": ["v1"]}, "cache": {"type": "none"}}}
    digest = "sha256:" + "ab" * 32
    try:
        async with operator():
            for obj in (secret, login):
                await cluster.apply(obj)
            await eventually(lambda: (cluster.get("kiln.dev/v1alpha1", "registrylogins", "reg") or {}).get("status"))
            await asyncio.sleep(1.5)
            start = kmock.counts.copy()
            await cluster.apply(build)
            (job,) = await eventually(lambda: cluster.jobs())
            pod = await cluster.start_pod(job)
            await cluster.run_pod(pod)
            metadata = json.dumps({"containerimage.digest": digest,
                                   "containerimage.descriptor": {"mediaType": "application/vnd.oci.image.manifest.v1+json"}})
            await cluster.finish(job, pod, exit_code=0, message=metadata)
            await eventually(lambda: (cluster.build("app").get("status") or {}).get("phase") == "Succeeded")
            life = kmock.requests_of("operator", since=start)
            await asyncio.sleep(2)  # let the last events settle
            idle_start = kmock.counts.copy()
            await asyncio.sleep(60)
            idle = kmock.requests_of("operator", since=idle_start)
    finally:
        registry.stop()
    life, idle = _report("one build, created to Succeeded", life), _report("one idle minute, one finished build", idle)
    figures.record("API requests in one build's life", life["total"], "requests, writes included", goal="<= 10",
                   met=life["total"] <= 10, by_verb=life["by_verb"], by_request=life["by_request"])
    figures.record("idle requests per minute, 1 finished (60 rounds)", idle["total"], "requests", baseline=0,
                   goal="0", met=idle["total"] == 0, by_request=idle["by_request"])
