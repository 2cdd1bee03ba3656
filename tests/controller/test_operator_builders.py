"""Warm builders through the real operator (kmock), a real buildkitd behind mutual TLS and a real registry.

The test plays the Deployment controller and the kubelet: when kiln makes a builder, the test starts the daemon
it describes (its certificates and buildkitd.toml read from the builder's Secret) on loopback, and reports its pod
Ready there. The operator is the BuildKit client: no Job is ever created.
"""
import asyncio
import base64
import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from controller.test_operator_builds import cond, image_build, phase, ready_login, status
from controller.test_operator_logs import SECRET_VALUE, terminal
from kiln import builds_cli
from kiln.build.logs import kept_text
from kiln.clients import buildctl, builder_tls

from kubefake import KubeFake, eventually, operator
from registries import free_port, push_image, start_token_registry, wait_for_port

pytestmark = [pytest.mark.operator, pytest.mark.registry, pytest.mark.kmock(cls=KubeFake)]
BUILDER = "kiln.dev/builder"


def _missing() -> str | None:
    if not (shutil.which("buildctl") and shutil.which("buildkitd")):
        return "buildctl and buildkitd are not on PATH (make test builds them from BuildKit's Go module)"
    if os.geteuid() != 0:
        return "buildkitd is started as root here"
    return None


class Daemons:
    """The daemons builder Secrets describe, on loopback, each by its builder's name."""

    def __init__(self, root):
        self.root, self.running = root, {}

    def __call__(self, secret: dict, port: int | None = None) -> int:
        """Start the daemon of the builder `secret` names (again, on its port, with its state); its port."""
        name = secret["metadata"]["name"]
        root = self.root / name
        (root / "certs").mkdir(parents=True, exist_ok=True)
        files = {key: base64.b64decode(value) for key, value in secret["data"].items()}
        for key, content in files.items():
            (root / "certs" / key).write_bytes(content)
        port = port or free_port()
        config = ["--config", str(root / "certs" / "buildkitd.toml")] if "buildkitd.toml" in files else []
        with (root / "buildkitd.log").open("ab") as log:
            process = subprocess.Popen(
                ["buildkitd", f"--root={root}/state", f"--addr=tcp://127.0.0.1:{port}", f"--addr=unix://{root}/sock",
                 f"--tlscacert={root}/certs/ca.crt", f"--tlscert={root}/certs/tls.crt",
                 f"--tlskey={root}/certs/tls.key", *config], stdout=log, stderr=subprocess.STDOUT)
        self.running[name] = (process, secret, port)
        wait_for_port(port, process, root / "buildkitd.log", timeout=30)
        return port

    def crash_and_restart(self, name: str) -> None:
        """The daemon dies (kill -9), and its pod's container is started again, as the kubelet restarts it: with
        nothing left mounted (a container's mounts go with it)."""
        process, secret, port = self.running[name]
        process.kill()
        process.wait(timeout=30)
        _unmount_below(self.root / name)
        self(secret, port)

    def stop(self) -> None:
        for name, (process, _, _) in self.running.items():
            process.terminate()
            process.wait(timeout=30)
            _unmount_below(self.root / name)


def _unmount_below(root) -> None:
    """What a daemon left mounted below root (a RUN step's root file system, when it was killed)."""
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(f"{root}/")]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


@pytest.fixture
def daemons(tmp_path):
    """Starts the daemon a builder's Secret describes; stops them all at the end."""
    problem = _missing()
    if problem:
        if os.environ.get("KILN_REQUIRE_BUILDKIT"):
            pytest.fail(f"the buildkit tier must run here (KILN_REQUIRE_BUILDKIT): {problem}")
        pytest.skip(problem)
    started = Daemons(tmp_path)
    yield started
    started.stop()


async def builder_runs(cluster, daemons, count: int = 1) -> tuple[str, int]:
    """Wait for kiln's count-th builder Deployment, start its daemon (as the Secret of its kind describes it), and
    report its pod Ready: (builder, daemon port)."""
    name, secret = await builder_made(cluster, count)
    port = await asyncio.to_thread(daemons, secret)
    await builder_pod_ready(cluster, name, port)
    return name, port


async def builder_made(cluster, count: int = 1) -> tuple[str, dict]:
    """kiln's count-th builder Deployment: its name, and the Secret of its kind under that name."""
    deployment = await eventually(lambda: len(found := cluster.all("apps/v1", "deployments")) >= count and found[-1],
                                  message=f"{count} builder Deployment(s)")
    name = deployment["metadata"]["name"]
    secret = cluster.get("v1", "secrets", deployment["metadata"]["labels"]["kiln.dev/builder-kind"])
    return name, {**secret, "metadata": {**secret["metadata"], "name": name}}


async def builder_pod_ready(cluster, name: str, port: int) -> None:
    """The builder's pod, Ready (as the kubelet's probe from the node finds it) on loopback at port."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-0", "labels": {BUILDER: name}},
           "spec": {"containers": [{"name": "buildkitd", "image": "buildkit",
                                    "ports": [{"name": "buildkit", "containerPort": port}]}]}}
    await cluster.apply(pod)
    await cluster.patch("v1", "pods", pod["metadata"]["name"], {"status": {
        "phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}, sub="status")


async def context(cluster, dockerfile: str) -> None:
    await cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ctx"},
                         "data": {"Dockerfile": dockerfile, "hello.txt": "hello\n"}})


async def warm_build(cluster, registry, dockerfile: str, **spec) -> None:
    """A Ready login, a ConfigMap context with dockerfile, and a warm one-platform ImageBuild "app" of it."""
    await ready_login(cluster, registry)
    await context(cluster, dockerfile)
    await cluster.apply(image_build(registry.host, **warm(platforms=["linux/amd64"], **spec)))


def warm(**spec) -> dict:
    return {"source": {"configMap": {"name": "ctx"}}, "builder": {"warm": True}, "cache": {"type": "none"}, **spec}


async def test_a_warm_build_runs_on_the_builder_without_a_job_and_its_rebuild_is_all_cached(
        cluster, basic_registry, daemons, tmp_path, monkeypatch):
    private = tmp_path / "operator-tmp"  # where the operator writes each build's client files
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    written, write = [], buildctl.write_files
    monkeypatch.setattr(buildctl, "write_files", lambda root, files: (written.append(root), write(root, files))[1])
    await asyncio.to_thread(push_image, basic_registry, "alice", "base/scratch", ["linux/amd64"], "v1")
    async with operator():
        await warm_build(cluster, basic_registry, "FROM scratch\nCOPY hello.txt /hello.txt\nCOPY hello.txt /again.txt\n",
                         historyLimit=1)
        builder, _ = await builder_runs(cluster, daemons)
        first = await phase(cluster, "Succeeded")
        assert first["digest"].startswith("sha256:") and first["units"][0]["totalSteps"] == 2
        await cluster.patch("kiln.dev/v1alpha1", "imagebuilds", "app",
                            {"metadata": {"annotations": {"kiln.dev/rebuild": "2"}}})
        again = await eventually(lambda: status(cluster).get("buildID") != first["buildID"]
                                 and status(cluster).get("phase") == "Succeeded" and status(cluster),
                                 message=f"the rebuild Succeeded; status {status(cluster)}")
    (unit,) = again["units"]
    assert (unit["cachedSteps"], unit["totalSteps"]) == (2, 2)  # the daemon kept its state: no cache import
    assert cluster.ever_created("batch/v1", "jobs") == []
    assert [d["metadata"]["name"] for d in cluster.all("apps/v1", "deployments")] == [builder]
    log = cluster.get("v1", "configmaps", f"{unit['job']}-log")
    assert log["metadata"]["ownerReferences"][0]["kind"] == "ImageBuild"
    # The first build left the history (historyLimit 1): its log went, as a pod build's goes with its Job.
    assert [c["metadata"]["name"] for c in cluster.all("v1", "configmaps")
            if "kiln.dev/build-log" in c["metadata"].get("labels", {})] == [log["metadata"]["name"]]
    async with terminal() as term:  # kiln logs prints the kept log of a warm build
        assert await builds_cli.logs(term, "app") == 0
        assert "COPY hello.txt /again.txt" in term.out.getvalue() and "CACHED" in term.out.getvalue()
    # The client's directory (docker config, client key) is gone with its build.
    assert len(written) == 2 and all(root.parent == private for root in written)
    assert list(private.iterdir()) == []


async def test_a_build_that_leaves_the_choice_open_runs_warm_where_its_namespace_makes_that_the_default(
        cluster, basic_registry, daemons):
    cluster.fake[f"get /api/v1/namespaces/{cluster.namespace}"] << {  # kmock keeps no Namespace objects
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": cluster.namespace, "labels": {"kiln.dev/default-builder": "warm"}}}
    async with operator():
        await ready_login(cluster, basic_registry)
        await context(cluster, "FROM scratch\nCOPY hello.txt /hello.txt\n")
        await cluster.apply(image_build(basic_registry.host, source={"configMap": {"name": "ctx"}},
                                        cache={"type": "none"}, platforms=["linux/amd64"]))
        await builder_runs(cluster, daemons)
        await phase(cluster, "Succeeded")
    assert "warm" not in cluster.get("kiln.dev/v1alpha1", "imagebuilds", "app")["spec"].get("builder", {})
    assert cluster.ever_created("batch/v1", "jobs") == []


async def test_suspending_a_warm_build_cancels_it_on_the_daemon(cluster, basic_registry, daemons):
    base = await busybox(basic_registry)
    marker = f"sleep {300 + os.getpid() % 600}"
    async with operator():
        await warm_build(cluster, basic_registry, f"FROM {base}\nRUN {marker}\n")
        await builder_runs(cluster, daemons)
        await eventually(lambda: running(marker), timeout=120,
                         message=f"the RUN step runs on the daemon; status {status(cluster)}")
        await cluster.patch("kiln.dev/v1alpha1", "imagebuilds", "app", {"spec": {"suspend": True}})
        await phase(cluster, "Cancelled")
        await eventually(lambda: not running(marker), timeout=30, message="the RUN step stopped on the daemon")
    assert cond(cluster, "Ready")["reason"] == "Suspended"


async def test_a_running_warm_builds_log_is_followed_as_it_comes_without_the_secrets_it_uses(
        cluster, basic_registry, daemons):
    """No pod to read a running warm build's log from: the operator writes it to its ConfigMap as it grows (a
    failed writing is tried again), and kiln logs reads and follows it there."""
    base = await busybox(basic_registry)
    await cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "npm", "labels": {"kiln.dev/build-secret": "true"}},
        "data": {"token": base64.b64encode(SECRET_VALUE.encode()).decode()}})
    run = ('RUN --mount=type=secret,id=npm echo "token $(cat /run/secrets/npm)" && echo "$((6*7))-first" '
           '&& sleep 6 && echo "$((6*8))-second"')
    cluster.fake.fail("post", "/configmaps", after=1)  # past the context's: the first writing fails, the next goes
    async with operator():
        await warm_build(cluster, basic_registry, f"FROM {base}\n{run}\n",
                         secrets=[{"id": "npm", "secretRef": {"name": "npm", "key": "token"}}])
        await builder_runs(cluster, daemons)
        async with terminal(poll=0.2) as term:
            following = asyncio.create_task(builds_cli.logs(term, "app", follow=True))
            await eventually(lambda: "42-first" in term.out.getvalue(), timeout=60,
                             message=f"the first line followed; status {status(cluster)}")
            assert "48-second" not in term.out.getvalue() and status(cluster)["phase"] == "Building"
            async with terminal() as now:  # kiln logs, not following: the log so far
                assert await builds_cli.logs(now, "app") == 0 and "42-first" in now.out.getvalue()
            assert await following == 0
    assert cluster.fake.faults[-1][3] == 0  # the failed writing happened
    followed = term.out.getvalue()
    assert [line.split(" ", 2)[-1] for line in followed.splitlines() if line.endswith(("-first", "-second"))] \
        == ["42-first", "48-second"]  # each line once, in order
    assert "token [redacted]" in followed and SECRET_VALUE not in followed
    (kept,) = [c for c in cluster.all("v1", "configmaps") if "kiln.dev/build-log" in c["metadata"].get("labels", {})]
    assert "kiln.dev/log-live" not in kept["metadata"]["annotations"] and SECRET_VALUE not in kept_text(kept)


async def busybox(registry) -> str:
    from cluster.images import busybox_layer

    await asyncio.to_thread(push_image, registry, "alice", "base/busybox", ["linux/amd64"], "v1",
                            {"linux/amd64": busybox_layer("amd64")})
    return f"{registry.host}/base/busybox:v1"


def running(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0


async def test_an_operator_restarted_mid_build_runs_the_lost_build_again(cluster, basic_registry, daemons):
    marker = f"sleep {2 + os.getpid() % 3}.{os.getpid() % 97}"
    base = await busybox(basic_registry)
    async with operator():
        await warm_build(cluster, basic_registry, f"FROM {base}\nRUN {marker}\n")
        await builder_runs(cluster, daemons)
        await eventually(lambda: running(marker), timeout=60, message=f"the RUN step runs; status {status(cluster)}")
    # The operator is gone, and with it the build's client: the daemon cancels the build.
    await eventually(lambda: not running(marker), timeout=30, message="the daemon cancelled the orphaned build")
    async with operator():
        done = await phase(cluster, "Succeeded")
    (unit,) = done["units"]
    assert (unit["attempt"], unit["retries"]) == (1, 1)
    assert "BuildRetried" in [e["reason"] for e in cluster.events()]


async def test_a_warm_build_longer_than_its_timeout_fails_timed_out_and_stops_on_the_daemon(
        cluster, basic_registry, daemons):
    marker = f"sleep {600 + os.getpid() % 300}"
    base = await busybox(basic_registry)
    async with operator():
        await warm_build(cluster, basic_registry, f"FROM {base}\nRUN {marker}\n", timeout="6s")
        await builder_runs(cluster, daemons)
        failed = await eventually(lambda: status(cluster).get("phase") == "Failed" and status(cluster), timeout=60,
                                  message=f"Failed; status {status(cluster)}")
    assert failed["units"][0]["reason"] == "TimedOut"
    await eventually(lambda: not running(marker), timeout=30, message="the RUN step stopped on the daemon")


async def test_an_idle_builder_scales_to_zero_and_the_next_build_scales_it_up(
        cluster, basic_registry, daemons, monkeypatch):
    monkeypatch.setenv("KILN_BUILDER_IDLE", "1")
    async with operator():
        await warm_build(cluster, basic_registry, "FROM scratch\nCOPY hello.txt /hello.txt\n")
        builder, _ = await builder_runs(cluster, daemons)
        first = await phase(cluster, "Succeeded")
        replicas = lambda: cluster.get("apps/v1", "deployments", builder)["spec"]["replicas"]  # noqa: E731
        await eventually(lambda: replicas() == 0, timeout=20, message="the idle builder scaled to zero")
        await cluster.patch("kiln.dev/v1alpha1", "imagebuilds", "app",
                            {"metadata": {"annotations": {"kiln.dev/rebuild": "2"}}})
        await eventually(lambda: replicas() == 1, timeout=20, message="the next build scaled the builder up")
        await eventually(lambda: status(cluster).get("buildID") != first["buildID"]
                         and status(cluster).get("phase") == "Succeeded", message=f"rebuilt; {status(cluster)}")


async def test_a_builder_whose_image_cannot_be_pulled_says_so_in_the_build(cluster, basic_registry):
    async with operator():
        await warm_build(cluster, basic_registry, "FROM scratch\nCOPY hello.txt /hello.txt\n")
        deployment = await eventually(lambda: next(iter(cluster.all("apps/v1", "deployments")), None),
                                      message="a builder Deployment")
        name = deployment["metadata"]["name"]
        await cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-0",
                                                                           "labels": {BUILDER: name}},
                             "spec": {"containers": [{"name": "buildkitd", "image": "buildkit"}]}})
        await cluster.patch("v1", "pods", f"{name}-0", {"status": {"phase": "Pending", "containerStatuses": [
            {"name": "buildkitd", "ready": False, "state": {"waiting": {
                "reason": "ImagePullBackOff", "message": "pull access denied for buildkit"}}}]}}, sub="status")
        unit = await eventually(lambda: (status(cluster).get("units") or [{}])[0].get("reason") == "BuilderImagePullFailed"
                                and status(cluster)["units"][0], message=f"the pull failure shown; {status(cluster)}")
    assert "pull access denied for buildkit" in unit["message"]
    assert cluster.ever_created("batch/v1", "jobs") == []


async def test_busy_builders_scale_out_to_another_up_to_the_namespaces_maximum(
        cluster, basic_registry, daemons, monkeypatch):
    monkeypatch.setenv("KILN_BUILDS_PER_BUILDER", "1")
    monkeypatch.setenv("KILN_MAX_BUILDERS_PER_NAMESPACE", "2")
    base = await busybox(basic_registry)
    markers = [f"sleep {3 + i}.{os.getpid() % 89}" for i in range(3)]
    async with operator():
        await ready_login(cluster, basic_registry)
        for i, marker in enumerate(markers):
            await cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"ctx{i}"},
                                 "data": {"Dockerfile": f"FROM {base}\nRUN {marker}\n"}})
            await cluster.apply(image_build(basic_registry.host, f"app{i}", **{
                **warm(platforms=["linux/amd64"]), "source": {"configMap": {"name": f"ctx{i}"}}}))
            if i < 2:  # the second finds the first builder busy: a second builder of the kind starts
                await builder_runs(cluster, daemons, count=i + 1)
        for i in range(3):
            await phase(cluster, "Succeeded", f"app{i}")
    names = sorted(d["metadata"]["name"] for d in cluster.all("apps/v1", "deployments"))
    assert len(names) == 2 and names[1] == f"{names[0]}-1"  # the third shared one: the namespace's maximum is 2
    kinds = {d["metadata"]["labels"]["kiln.dev/builder-kind"] for d in cluster.all("apps/v1", "deployments")}
    assert kinds == {names[0]} and [s["metadata"]["name"] for s in cluster.all("v1", "secrets")
                                    if (s["metadata"].get("labels") or {}).get("kiln.dev/builder-kind")] == [names[0]]


async def test_a_builder_that_dies_mid_build_fails_the_unit_retryably_and_the_retry_builds(
        cluster, basic_registry, daemons):
    marker = f"sleep {4 + os.getpid() % 3}.{os.getpid() % 83}"
    base = await busybox(basic_registry)
    async with operator():
        await warm_build(cluster, basic_registry, f"FROM {base}\nRUN {marker}\n")
        builder, _ = await builder_runs(cluster, daemons)
        await eventually(lambda: running(marker), timeout=60, message=f"the RUN step runs; status {status(cluster)}")
        await asyncio.to_thread(daemons.crash_and_restart, builder)
        done = await phase(cluster, "Succeeded")
    (unit,) = done["units"]
    assert (unit["attempt"], unit["retries"]) == (1, 1)
    retried = [e["message"] for e in cluster.events() if e["reason"] == "BuildRetried"]
    assert len(retried) == 1 and f"its builder {builder} went away mid-build" in retried[0], retried


async def test_a_ready_builder_the_operator_cannot_connect_to_retries_and_waits_saying_so(
        cluster, basic_registry, daemons):
    """A builder Ready to its kubelet that the operator cannot reach (a NetworkPolicy, a stale route): a build
    whose client could not connect is retried, and the retry waits, saying why, until the daemon answers."""
    async with operator():
        await warm_build(cluster, basic_registry, "FROM scratch\nCOPY hello.txt /hello.txt\n")
        builder, secret = await builder_made(cluster)
        once = socket.create_server(("127.0.0.1", 0))  # takes kiln's first look, then nothing listens
        once.settimeout(60)
        port = once.getsockname()[1]
        await builder_pod_ready(cluster, builder, port)
        await asyncio.to_thread(_first_look, once)
        unit = await eventually(lambda: (u := (status(cluster).get("units") or [{}])[0]).get("retries") == 1
                                and "cannot connect" in u.get("message", "") and u, timeout=60,
                                message=f"the retry waits for the builder; status {status(cluster)}")
        assert unit["phase"] == "Pending" and unit["message"] == (
            f"builder {builder} is ready at 127.0.0.1:{port}, but the operator cannot connect to it "
            "(does a NetworkPolicy stop it?)")
        await asyncio.to_thread(daemons, secret, port)
        await phase(cluster, "Succeeded")
    retried = [e["message"] for e in cluster.events() if e["reason"] == "BuildRetried"]
    assert len(retried) == 1 and f"kiln could not connect to its builder {builder} at 127.0.0.1:{port}" in retried[0]


async def test_a_token_service_a_from_registry_names_at_a_metadata_address_is_refused_by_the_operators_proxy(
        cluster, basic_registry, daemons, tmp_path):
    """The daemon asks the operator's buildctl for a token from the realm a registry's challenge names, any
    registry's: a FROM image's needs no login. kiln's proxy refuses what its registry client would."""
    evil = await asyncio.to_thread(start_token_registry, tmp_path / "evil", {}, realm="http://169.254.169.254/token")
    try:
        async with operator():
            await warm_build(cluster, basic_registry, f"FROM {evil.host}/base:v1\nCOPY hello.txt /hello.txt\n")
            await builder_runs(cluster, daemons)
            failed = await phase(cluster, "Failed")
    finally:
        evil.stop()
    assert (failed["failure"]["reason"], failed["units"][0]["retries"]) == ("AddressNotAllowed", 0)
    assert ("kiln refuses to connect to 169.254.169.254 (169.254.169.254), which is a link-local or cloud metadata "
            "address") in failed["failure"]["logExcerpt"]


def _first_look(listener: socket.socket) -> None:
    with listener:
        accepted, _ = listener.accept()
    accepted.close()


async def test_a_pod_build_on_a_volume_a_warm_builder_keeps_its_state_on_waits_for_it(cluster, basic_registry, daemons):
    async with operator():
        await ready_login(cluster, basic_registry)
        await context(cluster, "FROM scratch\nCOPY hello.txt /hello.txt\n")
        local = {"type": "local", "volume": {"claimName": "state"}}
        await cluster.apply(image_build(basic_registry.host, **warm(platforms=["linux/amd64"], cache=local)))
        builder, _ = await builder_runs(cluster, daemons)
        await phase(cluster, "Succeeded")
        await cluster.apply(image_build(basic_registry.host, "pod", **{**warm(platforms=["linux/amd64"], cache=local),
                                                                      "builder": {"warm": False}}))
        waiting = await eventually(lambda: cond(cluster, "Reconciling", "pod").get("reason") == "WaitingForCacheVolume"
                                   and cond(cluster, "Reconciling", "pod"), message=f"waits; {status(cluster, 'pod')}")
    assert f"in use by warm builder {builder}" in waiting["message"]
    assert cluster.jobs() == []


async def test_a_builders_daemon_takes_only_the_client_certificate_of_its_own_ca(
        cluster, basic_registry, daemons, tmp_path):
    async with operator():
        await warm_build(cluster, basic_registry, "FROM scratch\nCOPY hello.txt /hello.txt\n")
        builder, port = await builder_runs(cluster, daemons)
        await phase(cluster, "Succeeded")
    for name, text in builder_tls.issue(builder).items():  # another builder's, of the same name
        (tmp_path / name).write_text(text)
    secret = cluster.get("v1", "secrets", builder)["data"]
    for name in ("ca.crt", "client.crt", "client.key"):  # kiln's
        (tmp_path / f"own-{name}").write_bytes(base64.b64decode(secret[name]))
    own_ca = tmp_path / "own-ca.crt"

    def answers(*client: str) -> bool:
        return subprocess.run(["buildctl", f"--addr=tcp://127.0.0.1:{port}", f"--tlsservername={builder}",
                               f"--tlscacert={own_ca}", *client, "--timeout=5", "debug", "workers"],
                              capture_output=True, timeout=60).returncode == 0

    assert answers(f"--tlscert={tmp_path / 'own-client.crt'}", f"--tlskey={tmp_path / 'own-client.key'}")  # kiln's
    assert not answers()
    assert not answers(f"--tlscert={tmp_path / 'client.crt'}", f"--tlskey={tmp_path / 'client.key'}")


async def test_a_builder_that_pod_security_refuses_fails_the_build_with_that_reason(cluster, basic_registry):
    async with operator():
        await warm_build(cluster, basic_registry, "FROM scratch\nCOPY hello.txt /hello.txt\n")
        deployment = await eventually(lambda: next(iter(cluster.all("apps/v1", "deployments")), None),
                                      message="a builder Deployment")
        refusal = ('pods "x" is forbidden: violates PodSecurity "baseline:latest": host namespaces, '
                   'seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")')
        await cluster.patch("apps/v1", "deployments", deployment["metadata"]["name"], {"status": {"conditions": [
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": refusal}]}},
                            sub="status")
        failed = await phase(cluster, "Failed")
    (unit,) = failed["units"]
    assert unit["reason"] == "PodSecurityRejected" and "privileged level" in unit["message"]
    assert "violates PodSecurity" in unit["logExcerpt"]
