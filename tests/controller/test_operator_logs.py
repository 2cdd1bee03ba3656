"""Build logs kept after their pods are gone, and the CLI that reads them: the real operator against kmock."""
import asyncio
import base64
import contextlib
import gzip
import io
import os
import signal
import sys

import pytest

from controller.test_operator_builds import image_build, jobs, metadata, phase, ready_login
from kiln import builds_cli
from kiln.build.logs import HEAD_BYTES, TAIL_BYTES, kept_text
from kiln.build.outcomes import REDACTED
from kiln.clients.kube import Kube, load_config

from conftest import VERSION
from kubefake import KubeFake, eventually, operator

pytestmark = [pytest.mark.operator, pytest.mark.registry, pytest.mark.kmock(cls=KubeFake)]
SECRET_VALUE = "npm-Token-4f2a9c"
FIRST = "#1 [internal] load build definition from Dockerfile\n"
LAST = 'ERROR: process "/bin/sh -c npm ci" did not complete successfully: exit code: 1\n'


def ten_mebibytes_of_log() -> bytes:
    """What a chatty build prints: a start, 10 MiB of a RUN step's output (a secret among it), its failure."""
    line = "#7 12.3 npm warn deprecated some-package@1.0.0: a line a build prints again and again\n"
    middle = line * (10 * 1024 * 1024 // len(line))
    return (FIRST + f"#2 reading {SECRET_VALUE}\n" + middle + f"#7 token {SECRET_VALUE}\n" + LAST).encode()


@contextlib.asynccontextmanager
async def terminal(poll: float = 0.1):
    """The CLI's view of the emulated cluster, its output kept in strings."""
    load_config()
    kube = Kube()
    try:
        yield builds_cli.Terminal(kube, "default", out=io.StringIO(), err=io.StringIO(), poll=poll)
    finally:
        await kube.close()


async def failing_build_with_a_long_log(cluster, registry) -> tuple[dict, bytes]:
    """A build mounting an opted-in Secret whose pod prints 10 MiB and fails; its final status and the log."""
    await cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "npm", "labels": {"kiln.dev/build-secret": "true"}},
                         "data": {"token": base64.b64encode(SECRET_VALUE.encode()).decode()}})
    await ready_login(cluster, registry)
    await cluster.apply(image_build(registry.host, retries=0, secrets=[{"id": "npm", "secretRef": {"name": "npm", "key": "token"}}]))
    (job,) = await jobs(cluster, 1)
    pod = await cluster.start_pod(job)
    log = ten_mebibytes_of_log()
    cluster.fake[f"get /api/v1/namespaces/default/pods/{pod['metadata']['name']}/log"] << log
    await cluster.run_pod(pod)
    await cluster.finish(job, pod, exit_code=1, message=LAST)
    return await phase(cluster, "Failed"), log


async def test_a_10_mib_log_is_kept_as_its_head_a_marker_and_its_tail_owned_by_its_job_without_secrets(cluster, basic_registry):
    async with operator():
        failed, log = await failing_build_with_a_long_log(cluster, basic_registry)
    (job,) = cluster.jobs()
    (unit,) = failed["units"]
    kept = cluster.get("v1", "configmaps", unit["log"])
    assert kept["metadata"]["ownerReferences"] == [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                                                    "uid": job["metadata"]["uid"]}]
    packed = base64.b64decode(kept["binaryData"]["log.gz"])
    assert len(kept["binaryData"]["log.gz"]) < 1024 * 1024  # far below the API server's object limit
    text = gzip.decompress(packed).decode()
    assert text == kept_text(kept)
    head, marker, tail = text.partition("\n[kiln: ")
    assert head.startswith(FIRST) and text.endswith(LAST)
    cut = len(log) - HEAD_BYTES - TAIL_BYTES
    assert marker and tail.startswith(f"{cut} bytes of the log cut here; it had {len(log)} bytes in all]\n")
    assert len(text.encode()) < HEAD_BYTES + TAIL_BYTES + 200
    assert SECRET_VALUE not in text and text.count(REDACTED) == 2  # the mounted Secret's value, in the head and the tail
    assert failed["failure"]["logsCommand"] == f"kiln logs app -n default --build {failed['buildID']}"
    assert failed["history"][0]["logs"] == [unit["log"]]


async def test_kiln_logs_prints_the_kept_log_after_the_pod_is_gone_and_status_says_why_it_failed(cluster, basic_registry):
    async with operator():
        failed, _ = await failing_build_with_a_long_log(cluster, basic_registry)
        for pod in cluster.all("v1", "pods"):
            await cluster.delete("v1", "pods", pod["metadata"]["name"])
        await eventually(lambda: not cluster.all("v1", "pods"), message="the pods are gone")
        async with terminal() as term:
            assert await builds_cli.logs(term, "app") == 0
            printed = term.out.getvalue()
            assert printed.startswith(FIRST) and printed.endswith(LAST) and "bytes of the log cut here" in printed
            term.out.truncate(0), term.out.seek(0)
            assert await builds_cli.status(term, "app") == 1
            table = term.out.getvalue()
            assert "Phase       Failed (DockerfileError)" in table
            assert f"Logs        kiln logs app -n default --build {failed['buildID']}" in table
            assert SECRET_VALUE not in printed + table
            with pytest.raises(builds_cli.Problem, match="ImageBuild default/nope not found"):
                await builds_cli.status(term, "nope")


async def test_kiln_build_asks_for_a_rebuild_and_exits_with_its_result(cluster, basic_registry):
    async with operator():
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host))
        (job,) = await jobs(cluster, 1)
        await cluster.finish(job, await cluster.start_pod(job), exit_code=0, message=metadata("sha256:" + "ab" * 32))
        first = await phase(cluster, "Succeeded")
        async with terminal() as term:
            waiting = asyncio.create_task(builds_cli.rebuild(term, "app", wait=True))
            second = await eventually(lambda: [j for j in cluster.jobs() if j["metadata"]["name"] != job["metadata"]["name"]],
                                      message="the rebuild's Job")
            await cluster.finish(second[0], await cluster.start_pod(second[0]), exit_code=1, message=LAST)
            assert await asyncio.wait_for(waiting, 30) == 1
            assert "failed: DockerfileError" in term.err.getvalue()
            assert cluster.build("app")["status"]["buildID"] != first["buildID"]


async def test_ctrl_c_stops_following_and_leaves_the_build_running(cluster, basic_registry):
    async with operator():
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host))
        (job,) = await jobs(cluster, 1)
        pod = await cluster.start_pod(job)
        cluster.fake[f"get /api/v1/namespaces/default/pods/{pod['metadata']['name']}/log"] << FIRST.encode()
        await cluster.run_pod(pod)
        cluster.fake["get /version/"] << VERSION  # kiln checks that the cluster answers
        following = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kiln", "logs", "app", "-f", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        first = await asyncio.wait_for(following.stdout.readline(), 30)
        assert first.decode() == FIRST, (await following.stderr.read()).decode()[-3000:]  # it streams the running pod's log
        following.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(following.communicate(), 30)
        assert following.returncode == 130
        assert err.decode().strip() == "kiln: stopped; the build goes on (follow it again: kiln logs app -f)"
        assert cluster.build("app")["status"]["phase"] == "Building" and cluster.jobs()[0]["metadata"]["name"] == \
            job["metadata"]["name"]
