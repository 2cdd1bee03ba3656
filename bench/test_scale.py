"""kiln at scale against the emulator, side by side with a bare client in the same run.

The operator runs as its own process (`kiln run --namespace=kiln-bench`), as it does in a cluster; the
bare client (bench/bare_client.py) is another process, writing in a namespace the operator does not serve.
- create-to-Job latency for N = 1, 100 and 500 ImageBuilds created at once: from the first ImageBuild's
  creation to the last build Job's, as the emulator saw them; the ratio to the bare client is the figure,
  the median of a few runs in which the clients take turns at going first. A third client, kopf alone
  making the bare client's writes (bench/kopf_floor.py), shows what of kiln's time is kopf's. kiln's builds
  of a turn run and succeed before the next turn, as a cluster's would, so no turn is measured beside
  leftover work;
- RSS of the operator per ImageBuild with 1,000 finished builds (their Jobs and pods kept): of the operator
  that built them, above its RSS before the first; and of kiln and of a no-op kopf operator watching the
  same (bench/noop_operator.py), each started afresh, above the same process started with no objects (the
  median of a few starts each);
- requests the operator sends in an idle minute with those 1,000 finished builds (resync every 5 s).
All builds push to one repository (a tag each), so kiln's push check is made once, for a first build
measured apart, and then cached.
"""
import asyncio
import json
import os
import pathlib
import resource
import statistics
import sys

import pytest

from bare_client import image_build
from benchfake import BenchFake
from kubefake import Cluster, declare_resources, eventually, kubeconfig
from processes import BENCH, FLOOR, KILN, client, cpu_seconds, latency, record_latency, start, stop, turns
from registries import start_htpasswd_registry

OPERATED, BARE, FLOORED = "kiln-bench", "bare-bench", "floor-bench"
SIZES = {1: 15, 100: 4, 500: 1}  # N -> runs (the median is the figure): all of them and the rest make FINISHED
FINISHED = 1000
FRESH_STARTS = 3  # of each operator, for the memory figure
RESYNC = 5
NOOP = [sys.executable, "-m", "kopf", "run", "--standalone", str(BENCH / "noop_operator.py")]
DIGEST = "sha256:" + "ab" * 32
METADATA = json.dumps({"containerimage.digest": DIGEST,
                       "containerimage.descriptor": {"mediaType": "application/vnd.oci.image.manifest.v1+json"}})
VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.26", "compiler": "gc", "platform": "linux/amd64"}
pytestmark = [pytest.mark.kmock(cls=BenchFake)]


def _rss_kib(pid: int) -> int:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


async def _settled_rss(command: list[str], namespace: str, env: dict, log: pathlib.Path) -> int:
    """RSS of an operator started afresh, once it has listed and handled everything: steady over two resyncs."""
    process = start(command, namespace, env, log)
    try:
        samples = [0]
        while True:
            await asyncio.sleep(2 * RESYNC)
            samples.append(_rss_kib(process.pid))
            if abs(samples[-1] - samples[-2]) <= samples[-1] / 100:
                return samples[-1]
    finally:
        stop(process)


def _own_cpu_seconds() -> float:
    """CPU time of this process, the emulator's (a wait in the bench's own loop costs none)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _finish_every_build(cluster: Cluster) -> None:
    """Play the Job controller and the kubelet: every Job's pod runs and succeeds, reporting a digest."""
    limit = asyncio.Semaphore(20)

    async def finish(job: dict) -> None:
        async with limit:
            pod = await cluster.start_pod(job)
            await cluster.finish(job, pod, exit_code=0, message=METADATA)

    await asyncio.gather(*(finish(job) for job in cluster.jobs() if not job.get("status", {}).get("succeeded")))


async def _end_builds(cluster: Cluster, built: int) -> None:
    """kiln's builds so far run and succeed before the next client's turn, as a cluster's would: the bare client
    and kopf alone take their turns with nothing left to do, and so does kiln. (Jobs whose pods never come
    would be looked into every 10 s, by kiln and by the emulator, while another client is measured.)"""
    await _finish_every_build(cluster)
    await eventually(lambda: _succeeded(cluster) == built, timeout=600, interval=0.05)
    await asyncio.sleep(0.5)  # the echoes of the last status writes


def _succeeded(cluster: Cluster) -> int:
    return sum((b.get("status") or {}).get("phase") == "Succeeded" for b in cluster.all("kiln.dev/v1alpha1", "imagebuilds"))


async def test_latency_memory_and_idle_requests_at_scale_beside_a_bare_client(kmock, tmp_path, figures):
    declare_resources(kmock)
    kmock["get /version/"] << VERSION  # where `kiln run` first asks whether the API server answers
    registry = start_htpasswd_registry(tmp_path / "registry", {"alice": "alice-pw"})
    image = f"{registry.host}/team/app"
    cluster = Cluster(kmock, namespace=OPERATED)
    env = {**os.environ, "KUBECONFIG": kubeconfig(kmock, tmp_path / "kubeconfig"), "KILN_METRICS_PORT": "0",
           "KILN_RESYNC_INTERVAL": str(RESYNC)}
    operator, floor = start(KILN, OPERATED, env, tmp_path / "operator.log"), None
    try:
        await cluster.apply({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
                             "metadata": {"name": "reg-creds", "labels": {"kiln.dev/registry-login": "true"}},
                             "data": {"username": "YWxpY2U=", "password": "YWxpY2UtcHc="}})
        await cluster.apply({"apiVersion": "kiln.dev/v1alpha1", "kind": "RegistryLogin", "metadata": {"name": "reg"},
                             "spec": {"server": registry.host, "secretRef": {"name": "reg-creds"}, "insecure": True}})
        await eventually(lambda: (cluster.get("kiln.dev/v1alpha1", "registrylogins", "reg") or {}).get("status"),
                         timeout=60)
        await asyncio.sleep(3)
        baseline_rss = _rss_kib(operator.pid)

        async with client("bare", str(kmock.url), "warm-up", 1, image, "w"):  # the first write of a kind costs more
            pass
        # kiln's first build to a repository checks that the login may push there; later ones reuse the answer
        # (per login revision and repository). Measured on its own, so that N=1 is a build like any later one.
        await cluster.apply(image_build(OPERATED, "first", image))
        first = await eventually(lambda: kmock.job_created.get((OPERATED, "first")), timeout=60, interval=0.01)
        figures.record("create-to-Job latency, first build to a repository",
                       round((first - kmock.build_created[(OPERATED, "first")]) * 1000, 1),
                       "ms, with kiln's push check against the registry")
        floor = start(FLOOR, FLOORED, {**env, "KOPF_FLOOR_SERVER": str(kmock.url), "PYTHONPATH": str(BENCH)},
                       tmp_path / "floor.log")
        await asyncio.sleep(3)  # its watch is open
        built = 1  # kiln's builds so far: the first one
        for count, repeats in SIZES.items():
            runs = []
            for run in range(repeats):  # the clients take turns at going first: the emulator warms up, too
                prefix = f"r{run}n{count}"
                measured = {}
                for mode in turns(run):
                    namespace = {"bare": BARE, "create": OPERATED, "floor": FLOORED}[mode]
                    cpu = cpu_seconds(operator.pid), _own_cpu_seconds()
                    async with client("create" if mode == "floor" else mode, str(kmock.url), namespace, count, image, prefix):
                        seen = await eventually(lambda ns=namespace, p=prefix, n=count: latency(kmock, ns, p, n),
                                                   timeout=600, interval=0.05)
                    measured[mode] = (*seen, cpu_seconds(operator.pid) - cpu[0], _own_cpu_seconds() - cpu[1])
                    if mode == "create":
                        built += count
                        await _end_builds(cluster, built)
                runs.append(measured)
            record_latency(figures, f"create-to-Job latency, N={count}", runs,
                           {"floor": ("kopf alone", "bench/kopf_floor.py: kopf and the bare writes")},
                           operator_cpu_seconds=round(statistics.median(r["create"][2] for r in runs), 2),
                           emulator_cpu_seconds=round(statistics.median(r["create"][3] for r in runs), 2),
                           emulator_cpu_seconds_for_bare=round(statistics.median(r["bare"][3] for r in runs), 2))
        stop(floor)

        more = FINISHED - sum(n * repeats for n, repeats in SIZES.items()) - 1  # and the first build
        async with client("create", str(kmock.url), OPERATED, more, image, "rest"):
            await eventually(lambda: latency(kmock, OPERATED, "rest", more), timeout=600)
        await _end_builds(cluster, FINISHED)
        await asyncio.sleep(2 * RESYNC)
        rss = _rss_kib(operator.pid)
        figures.record(f"RSS per ImageBuild, {FINISHED} built in this run", round((rss - baseline_rss) / FINISHED, 1),
                       "KiB above the operator before its first build", empty_kib=baseline_rss, loaded_kib=rss)

        before, cpu = kmock.counts.copy(), cpu_seconds(operator.pid)
        await asyncio.sleep(60)
        idle = kmock.requests_of("operator", since=before)
        reads = sum(n for (verb, _), n in idle.items() if verb in ("get", "list"))
        figures.record(f"idle requests per minute, {FINISHED} finished", sum(idle.values()), "requests",
                       baseline=0, goal="0 reads per resync", met=reads == 0,
                       resync_rounds=60 // RESYNC, cpu_seconds=round(cpu_seconds(operator.pid) - cpu, 2),
                       by_request={f"{v} {r}": n for (v, r), n in sorted(idle.items())},
                       # kmock replays every object to a watch that restarts: how often that happened.
                       watches_opened=sum(n for (who, verb, _), n in kmock.counts.items()
                                          if who == "operator" and verb == "watch"))
        stop(operator)

        # Side by side, each freshly started: kiln and a no-op kopf operator watching the same, with the
        # 1,000 finished builds' objects and with none; a few times each, in turns, the median the figure (one
        # start's figure moves by more than the goal's margin, the no-op's most: 63 to 76 KiB on one day).
        per_build: dict[str, list[float]] = {"kiln": [], "no-op kopf": []}
        for _ in range(FRESH_STARTS):
            for name, command in (("kiln", KILN), ("no-op kopf", NOOP)):
                empty, loaded = [await _settled_rss(command, namespace, env, tmp_path / f"{name}-{namespace}.log")
                                 for namespace in ("empty-bench", OPERATED)]
                per_build[name].append((loaded - empty) / FINISHED)
        kiln, noop = (statistics.median(per_build[name]) for name in ("kiln", "no-op kopf"))
        figures.record(f"RSS per ImageBuild, {FINISHED} finished, fresh start", round(kiln, 1),
                       "KiB above the same operator with none", baseline=round(noop, 1),
                       goal=f"<= no-op + 20 KiB (+{kiln - noop:.0f})", met=kiln - noop <= 20,
                       per_start={name: [round(v, 1) for v in values] for name, values in per_build.items()})
    finally:
        for process in (operator, floor):
            if process:
                stop(process)
        registry.stop()
