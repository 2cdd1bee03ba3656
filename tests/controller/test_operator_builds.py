"""ImageBuild lifecycle: the real operator against kmock; the test plays the Job controller and the kubelet."""
import asyncio
import base64
import json

import pytest

from kiln.build.platforms import BuildUnit
from kiln.build.render import build_secret_name, render_job
from kiln.spec import reasons
from kiln.spec.parse import parse_image_build
from kiln.spec.settings import Settings

from conftest import BASIC_USERS, TOKEN_USERS, b64, login_objects, ready_of
from kubefake import KubeFake, eventually, operator
from registries import push_image, read_manifest

pytestmark = [pytest.mark.operator, pytest.mark.registry, pytest.mark.kmock(cls=KubeFake)]
IB = ("kiln.dev/v1alpha1", "imagebuilds")
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
DIGEST = "sha256:" + "ab12" * 16
# buildctl --progress=plain output, as BuildKit writes it (see the buildkit tier for a real one).
BUILD_LOG = """#1 [internal] load build definition from Dockerfile
#4 importing cache manifest from 127.0.0.1:5000/team/app:build-cache
#5 [1/3] FROM 127.0.0.1:5000/hub-mirrors/base:v1@sha256:f784
#7 [2/3] COPY deploy.sh deploy.sh
#7 CACHED
#8 [3/3] COPY application.jar app.jar
#8 DONE 0.0s
#9 exporting to image
"""


def image_build(host: str, name: str = "app", **spec) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": name},
            "spec": {"registryLogins": ["reg"], "source": {"git": {"url": "https://git.example/app.git", "revision": "main"}},
                     "output": {"image": f"{host}/team/app", "tags": ["v1"]}, **spec}}


def metadata(digest: str, media_type: str = MANIFEST) -> str:
    """What buildctl writes to --metadata-file (the termination message)."""
    return json.dumps({"containerimage.digest": digest, "containerimage.descriptor": {"mediaType": media_type, "digest": digest}})


def status(cluster, name: str = "app") -> dict:
    return (cluster.build(name) or {}).get("status") or {}


def cond(cluster, kind: str, name: str = "app") -> dict:
    return next((c for c in status(cluster, name).get("conditions") or [] if c["type"] == kind), {})


async def ready_login(cluster, registry, user: str = "alice", name: str = "reg", password: str | None = None) -> None:
    for obj in login_objects(name, registry.host, user, password or registry.users[user]):
        await cluster.apply(obj)
    await eventually(lambda: ready_of(cluster.get("kiln.dev/v1alpha1", "registrylogins", name)).get("status") == "True",
                     message=f"login {name} Ready")


async def jobs(cluster, count: int) -> list[dict]:
    await eventually(lambda: len(cluster.jobs()) == count,
                     message=f"{count} Job(s); have {[j['metadata']['name'] for j in cluster.jobs()]}")
    return cluster.jobs()


async def phase(cluster, wanted: str, name: str = "app") -> dict:
    return await eventually(lambda: status(cluster, name).get("phase") == wanted and status(cluster, name),
                            message=f"phase {wanted}; status {status(cluster, name)}")


async def first_job(cluster, registry, **spec) -> dict:
    """A Ready login and an ImageBuild using it; returns the build's Job once the operator created it."""
    await ready_login(cluster, registry)
    await cluster.apply(image_build(registry.host, **spec))
    (job,) = await jobs(cluster, 1)
    return job


async def succeed(cluster, job: dict, digest: str = DIGEST) -> dict:
    """The job's pod pushes `digest` and ends; returns the Succeeded status."""
    await cluster.finish(job, await cluster.start_pod(job), exit_code=0, message=metadata(digest))
    return await phase(cluster, "Succeeded")


def build_secrets(cluster) -> list[str]:
    return [s["metadata"]["name"] for s in cluster.all("v1", "secrets") if "kiln.dev/imagebuild" in s["metadata"]["labels"]]


def event_reasons(cluster) -> list[str]:
    return [e.get("reason") for e in cluster.events()]


async def test_a_build_runs_its_rendered_job_with_merged_credentials_and_reports_the_pushed_image(cluster, basic_registry):
    index, digests = await _push(basic_registry, ["linux/amd64"], tag="v1")  # what BuildKit leaves: an index
    async with operator():
        job = await first_job(cluster, basic_registry)
        build = cluster.build("app")
        expected = render_job(parse_image_build(build), BuildUnit(()), Settings.from_env(), buildkitd=("buildkitd.toml",),
                              auth_tls=(f"host={basic_registry.host},insecure=true",))
        assert job["spec"] == expected["spec"]
        for key in ("name", "labels", "annotations", "ownerReferences"):
            assert job["metadata"][key] == expected["metadata"][key]
        spec = parse_image_build(build)
        secret = cluster.get("v1", "secrets", build_secret_name(spec.name, spec.build_id))
        config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
        assert config["auths"][basic_registry.host]["auth"] == b64(f"alice:{BASIC_USERS['alice']}")
        assert secret["metadata"]["ownerReferences"][0]["uid"] == build["metadata"]["uid"]
        assert ready_of(build).get("status") != "True"

        pod = await cluster.start_pod(job)
        cluster.fake[f"get /api/v1/namespaces/default/pods/{pod['metadata']['name']}/log"] << BUILD_LOG.encode()
        await cluster.run_pod(pod)
        await phase(cluster, "Building")
        assert cond(cluster, "Reconciling")["status"] == "True" and cond(cluster, "Ready")["status"] == "False"
        await cluster.finish(job, pod, exit_code=0, message=metadata(index, INDEX))
        done = await phase(cluster, "Succeeded")
        await eventually(lambda: cluster.get("v1", "secrets", secret["metadata"]["name"]) is None,
                         message="the merged Secret is removed once the build is over")
        await eventually(lambda: {"BuildStarted", "BuildSucceeded"} <= set(event_reasons(cluster)), message="events")
    image = f"{basic_registry.host}/team/app@{index}"
    assert (done["image"], done["digest"], done["shortDigest"]) == (image, index, index[7:19])
    assert done["platforms"] == [{"platform": "linux/amd64", "digest": digests["linux/amd64"], "builtBy": "native"}]
    assert cond(cluster, "Ready") | {"lastTransitionTime": None} == {
        "type": "Ready", "status": "True", "reason": "Succeeded", "message": f"pushed {image}",
        "observedGeneration": 1, "lastTransitionTime": None}
    assert cond(cluster, "Stalled")["status"] == "False" and cond(cluster, "Reconciling")["status"] == "False"
    assert cond(cluster, "CredentialsReady")["status"] == "True"
    assert done["cache"] == {"type": "registry", "exportRef": f"{basic_registry.host}/team/app:build-cache",
                             "importRefs": [f"{basic_registry.host}/team/app:build-cache"], "cachedSteps": 1, "totalSteps": 2}
    assert done["observedGeneration"] == 1 and done["jobName"] == job["metadata"]["name"]
    assert done["history"][0]["phase"] == "Succeeded" and done["history"][0]["digest"] == index
    assert cluster.ever_created("batch/v1", "jobs") == [job["metadata"]["name"]]


async def test_a_job_that_completes_before_its_pod_is_seen_ending_waits_for_the_pods_digest(cluster, basic_registry):
    """Jobs and Pods come on separate watch streams: a Complete Job whose pod kiln last saw running is no build
    without a digest (the single-pod fallback would find no tag in the registry and fail it)."""
    async with operator():
        job = await first_job(cluster, basic_registry, cache={"type": "none"})
        pod = await cluster.start_pod(job)
        await cluster.run_pod(pod)
        await phase(cluster, "Building")
        await cluster.finish(job, None, exit_code=0)  # the Job controller's word first
        await asyncio.sleep(1)  # kiln sees it with the pod still running (it would have failed the build here)
        assert status(cluster)["phase"] == "Building"
        await cluster.finish(job, pod, exit_code=0, message=metadata(DIGEST))
        done = await phase(cluster, "Succeeded")
    assert done["digest"] == DIGEST


async def test_a_job_that_completes_before_any_pod_of_it_is_seen_waits_for_the_pods_digest(cluster, basic_registry):
    """A busy operator may get a fast build's Job before the first event of its pod."""
    async with operator():
        job = await first_job(cluster, basic_registry, cache={"type": "none"})
        await cluster.finish(job, None, exit_code=0)
        await asyncio.sleep(1)  # kiln sees it with no pod (it would have failed the build here: no tag in the registry)
        assert status(cluster)["phase"] in ("Pending", "Building") and not status(cluster).get("failure")
        pod = await cluster.start_pod(job)
        await cluster.finish(job, pod, exit_code=0, message=metadata(DIGEST))
        done = await phase(cluster, "Succeeded")
    assert done["digest"] == DIGEST


async def test_qemu_multiarch_reports_the_digest_of_every_platform_in_the_pushed_index(cluster, basic_registry):
    platforms = ["linux/amd64", "linux/arm64"]
    index, digests = await _push(basic_registry, platforms, tag="v1")
    async with operator():
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host, platforms=platforms, multiArch={"strategy": "qemu"}))
        (job,) = await jobs(cluster, 1)
        pod = await cluster.start_pod(job)
        await cluster.finish(job, pod, exit_code=0, message=metadata(index, INDEX))
        done = await phase(cluster, "Succeeded")
    assert done["digest"] == index
    assert done["platforms"] == [{"platform": p, "digest": digests[p], "builtBy": "qemu"} for p in platforms]


async def test_native_multiarch_assembles_one_index_from_per_platform_pods(cluster, basic_registry):
    platforms = ["linux/amd64", "linux/arm64"]
    _, digests = await _push(basic_registry, platforms)
    async with operator():
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host, platforms=platforms, multiArch={"strategy": "native"},
                                        output={"image": f"{basic_registry.host}/team/app", "tags": ["v2", "latest"]}))
        built = await jobs(cluster, 2)
        for job in built:
            arch = job["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"]
            pod = await cluster.start_pod(job)
            await cluster.finish(job, pod, exit_code=0, message=metadata(digests[f"linux/{arch}"]))
        done = await phase(cluster, "Succeeded")
    for tag in ("v2", "latest"):
        media_type, index, digest = read_manifest(basic_registry, "alice", "team/app", tag)
        assert media_type == INDEX and digest == done["digest"]
        assert [(m["platform"]["architecture"], m["digest"]) for m in index["manifests"]] == \
               [("amd64", digests["linux/amd64"]), ("arm64", digests["linux/arm64"])]
    assert done["platforms"] == [{"platform": p, "digest": digests[p], "builtBy": "native"} for p in platforms]


async def _push(registry, platforms, tag=None):
    import asyncio

    return await asyncio.to_thread(push_image, registry, "alice", "team/app", platforms, tag)


DOCKERFILE_LOG = '#7 [2/3] RUN make\n#7 ERROR: process "/bin/sh -c make" did not complete successfully: exit code: 2\n' \
                 'error: failed to solve: process "/bin/sh -c make" did not complete successfully: exit code: 2'
FAILURES = [
    # (id, how the pod ends, reason, retried, message fragment)
    ("dockerfile-error", {"exit_code": 1, "message": DOCKERFILE_LOG}, reasons.DOCKERFILE_ERROR, False, "a Dockerfile step failed"),
    ("from-pull-denied", {"exit_code": 1, "message": "error: failed to solve: r.example/base:1: failed to resolve source "
                          "metadata for r.example/base:1: failed to authorize: 401 Unauthorized"},
     reasons.BASE_IMAGE_PULL_DENIED, False, "a FROM image could not be pulled"),
    ("push-denied", {"exit_code": 1, "message": "error: failed to solve: failed to push r.example/team/app:v1: "
                     "server message: insufficient_scope: authorization failed"}, reasons.PUSH_DENIED, False,
     "the registry refused the push"),
    ("timeout", {"exit_code": 137, "job_reason": "DeadlineExceeded"}, reasons.TIMED_OUT, False, "longer than spec.timeout"),
    ("oom", {"exit_code": 137, "reason": "OOMKilled"}, reasons.OUT_OF_MEMORY, False, "ran out of memory"),
    ("evicted", {"exit_code": 137, "pod_status": {"reason": "Evicted", "message": "The node was low on resource: memory."}},
     reasons.EVICTED, True, "The node was low on resource: memory."),
    ("registry-503", {"exit_code": 1, "message": "error: failed to solve: failed to push r.example/team/app:v1: "
                      "unexpected status: 503 Service Unavailable"}, reasons.REGISTRY_TRANSIENT, True, "transiently"),
    # The kubelet keeps pulling by itself: no new Job, the build fails once KILN_IMAGE_PULL_GRACE (here 1s) is over.
    ("builder-image-pull", "pull", reasons.BUILDER_IMAGE_PULL_FAILED, False, "the BuildKit image could not be pulled"),
]


async def _end(cluster, job, how) -> None:
    pod = await cluster.start_pod(job)
    if how == "pull":
        await cluster.pull_fails(pod)
    else:
        await cluster.finish(job, pod, **how)


@pytest.mark.parametrize(("how", "reason", "retried", "fragment"),
                         [pytest.param(h, r, t, f, id=i) for i, h, r, t, f in FAILURES])
async def test_each_failure_class_has_its_reason_and_only_transient_ones_are_retried(cluster, basic_registry, how,
                                                                                      reason, retried, fragment,
                                                                                      monkeypatch):
    monkeypatch.setenv("KILN_IMAGE_PULL_GRACE", "1")
    async with operator():
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host, retries=1))
        (job,) = await jobs(cluster, 1)
        await _end(cluster, job, how)
        if retried:
            retry = await eventually(lambda: [j for j in cluster.jobs() if j["metadata"]["name"].endswith("-r1")],
                                     message="a retry Job")
            await eventually(lambda: "BuildRetried" in event_reasons(cluster), message="BuildRetried event")
            await _end(cluster, retry[0], how)
        failed = await phase(cluster, "Failed")
        await eventually(lambda: "BuildFailed" in event_reasons(cluster), message="BuildFailed event")
    command = f"kiln logs app -n default --build {failed['buildID']}"
    assert failed["failure"]["reason"] == reason and fragment in failed["failure"]["message"]
    assert failed["failure"]["logsCommand"] == command
    assert cond(cluster, "Ready")["reason"] == reason and command in cond(cluster, "Ready")["message"]
    assert cond(cluster, "Stalled")["status"] == "True" and cond(cluster, "Reconciling")["status"] == "False"
    assert len(cluster.ever_created("batch/v1", "jobs")) == (2 if retried else 1)
    if how != "pull" and how.get("message"):
        assert failed["failure"]["logExcerpt"].splitlines()[-1] == how["message"].splitlines()[-1]


async def test_an_invalid_spec_is_reported_and_nothing_is_created(cluster, basic_registry):
    async with operator():
        await ready_login(cluster, basic_registry)
        bad = image_build(basic_registry.host)
        bad["spec"]["source"]["url"] = "https://example.com/context.tgz"  # and git: two sources
        await cluster.apply(bad)
        await phase(cluster, "Failed")
    assert cond(cluster, "Ready")["reason"] == reasons.INVALID_SPEC
    assert "exactly one of source.git, source.volume, source.configMap or source.url" in cond(cluster, "Ready")["message"]
    assert cond(cluster, "Stalled")["status"] == "True"
    assert cluster.ever_created("batch/v1", "jobs") == [] and cluster.ever_created("v1", "secrets") == ["reg-creds"]


@pytest.mark.parametrize("problem", ["missing-login", "conflict", "login-not-ready", "push-denied", "secret-not-opted-in",
                                     "mounted-secret-missing"])
async def test_credential_problems_stall_the_build_before_any_job(cluster, basic_registry, token_registry, problem):
    host = basic_registry.host
    async with operator():
        if problem == "missing-login":
            await cluster.apply(image_build(host, registryLogins=["reg", "ghost"]))
            await ready_login(cluster, basic_registry)
            expected = (reasons.LOGIN_NOT_FOUND, "RegistryLogin 'ghost' named in spec.registryLogins does not exist")
        elif problem == "conflict":
            await ready_login(cluster, basic_registry)
            await ready_login(cluster, basic_registry, user="bob", name="reg2")
            build = image_build(host)
            del build["spec"]["registryLogins"]  # every login in the namespace
            await cluster.apply(build)
            expected = (reasons.LOGIN_CONFLICT, f"RegistryLogins 'reg' and 'reg2' both log in to {host}")
        elif problem == "login-not-ready":
            for obj in login_objects("reg", host, "alice", "wrong-password"):
                await cluster.apply(obj)
            await cluster.apply(image_build(host))
            expected = (reasons.LOGIN_NOT_READY, "RegistryLogin 'reg' is not Ready (AuthenticationFailed")
        elif problem in ("secret-not-opted-in", "mounted-secret-missing"):
            await ready_login(cluster, basic_registry)
            if problem == "secret-not-opted-in":  # a Secret the build's author may not read
                await cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                                     "type": "Opaque", "data": {"password": b64("database-password")}})
            await cluster.apply(image_build(host, secrets=[{"id": "db", "secretRef": {"name": "db", "key": "password"}}]))
            expected = (reasons.SECRET_NOT_OPTED_IN, "Secret 'db' has not opted in to ImageBuilds: label it "
                        "kiln.dev/build-secret=true") if problem == "secret-not-opted-in" else \
                (reasons.SECRET_NOT_FOUND, "Secret 'db' that the build uses does not exist in namespace 'default'")
        else:
            await ready_login(cluster, token_registry, user="reader", password=TOKEN_USERS["reader"][0])
            await cluster.apply(image_build(token_registry.host))
            expected = (reasons.PUSH_DENIED, f"{token_registry.host} denies push to team/app")
        await eventually(lambda: cond(cluster, "CredentialsReady").get("reason") == expected[0],
                         message=f"CredentialsReady {expected[0]}; have {cond(cluster, 'CredentialsReady')}")
    credentials = cond(cluster, "CredentialsReady")
    assert credentials["status"] == "False" and expected[1] in credentials["message"]
    assert cond(cluster, "Stalled")["status"] == "True" and cond(cluster, "Ready")["status"] == "False"
    assert cluster.ever_created("batch/v1", "jobs") == []


async def test_a_build_waiting_for_a_login_starts_when_the_login_appears(cluster, basic_registry):
    async with operator():
        await cluster.apply(image_build(basic_registry.host))
        await eventually(lambda: cond(cluster, "CredentialsReady").get("reason") == reasons.LOGIN_NOT_FOUND)
        await ready_login(cluster, basic_registry)
        await jobs(cluster, 1)
        await eventually(lambda: cond(cluster, "CredentialsReady").get("status") == "True")


async def test_a_spec_change_mid_build_supersedes_it_with_exactly_one_new_job(cluster, basic_registry):
    async with operator():
        old = await first_job(cluster, basic_registry)
        await cluster.run_pod(await cluster.start_pod(old))
        await phase(cluster, "Building")
        await cluster.patch(*IB, "app", {"spec": {"source": {"git": {"revision": "next"}}}})
        await eventually(lambda: [j["metadata"]["labels"]["kiln.dev/generation"] for j in cluster.jobs()] == ["2"],
                         message="only the new Job")
        (new,) = cluster.jobs()
        await eventually(lambda: "BuildSuperseded" in event_reasons(cluster), message="BuildSuperseded event")
        current = await eventually(lambda: status(cluster).get("observedGeneration") == 2 and status(cluster))
    assert new["metadata"]["labels"]["kiln.dev/generation"] == "2"
    assert "--opt=context=https://git.example/app.git#next" in new["spec"]["template"]["spec"]["containers"][0]["args"]
    assert current["history"][0] | {"completionTime": None} == {
        "buildID": old["metadata"]["labels"]["kiln.dev/build-id"], "generation": 1, "jobName": old["metadata"]["name"],
        "phase": "Cancelled", "reason": reasons.SUPERSEDED, "startTime": current["history"][0]["startTime"],
        "completionTime": None}
    assert len(cluster.ever_created("batch/v1", "jobs")) == 2


async def test_the_rebuild_annotation_builds_the_same_spec_once_more(cluster, basic_registry):
    async with operator():
        first = await first_job(cluster, basic_registry)
        done = await succeed(cluster, first)
        await cluster.patch(*IB, "app", {"metadata": {"annotations": {"kiln.dev/rebuild": "2026-11-28T12:00"}}})
        await eventually(lambda: len(cluster.ever_created("batch/v1", "jobs")) == 2, message="one more Job")
        again = await eventually(lambda: status(cluster).get("buildID") != done["buildID"] and status(cluster))
    assert cluster.build("app")["metadata"]["generation"] == 1
    assert again["phase"] in ("Pending", "Building") and cond(cluster, "Ready")["status"] == "False"


async def test_suspend_cancels_the_running_build_keeps_the_record_and_resumes_later(cluster, basic_registry):
    async with operator():
        job = await first_job(cluster, basic_registry)
        await cluster.run_pod(await cluster.start_pod(job))
        building = await phase(cluster, "Building")
        await cluster.patch(*IB, "app", {"spec": {"suspend": True}})
        cancelled = await phase(cluster, "Cancelled")
        await jobs(cluster, 0)
        await eventually(lambda: "BuildCancelled" in event_reasons(cluster))
        assert cond(cluster, "Ready")["reason"] == reasons.SUSPENDED
        assert cancelled["buildID"] == building["buildID"]  # the same build, not a new one
        assert cancelled["history"][0]["phase"] == "Cancelled" and cancelled["history"][0]["reason"] == reasons.SUSPENDED
        await cluster.patch(*IB, "app", {"spec": {"suspend": False}})
        (resumed,) = await jobs(cluster, 1)
    assert resumed["metadata"]["name"] == job["metadata"]["name"] + "-r1"


async def test_ready_is_true_only_while_the_current_generation_is_pushed(cluster, basic_registry):
    async with operator():
        job = await first_job(cluster, basic_registry)
        await succeed(cluster, job)
        assert cond(cluster, "Ready")["status"] == "True"
        await cluster.patch(*IB, "app", {"spec": {"output": {"tags": ["v2"]}}})
        await eventually(lambda: status(cluster).get("observedGeneration") == 2)
        assert cond(cluster, "Ready")["status"] == "False" and cond(cluster, "Ready")["observedGeneration"] == 2
        new = await eventually(lambda: [j for j in cluster.jobs() if j["metadata"]["name"] != job["metadata"]["name"]])
        await succeed(cluster, new[0])
    assert cond(cluster, "Ready")["status"] == "True" and cond(cluster, "Ready")["observedGeneration"] == 2


async def test_history_keeps_the_limit_and_deletes_older_jobs(cluster, basic_registry):
    async with operator():
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host, historyLimit=1))
        (first,) = await jobs(cluster, 1)
        await succeed(cluster, first)
        await cluster.patch(*IB, "app", {"metadata": {"annotations": {"kiln.dev/rebuild": "1"}}})
        second = await eventually(lambda: [j for j in cluster.jobs() if j["metadata"]["name"] != first["metadata"]["name"]])
        await cluster.finish(second[0], await cluster.start_pod(second[0]), exit_code=0, message=metadata(DIGEST))
        await eventually(lambda: [j["metadata"]["name"] for j in cluster.jobs()] == [second[0]["metadata"]["name"]],
                         message="the older Job is deleted")
    assert [h["jobName"] for h in status(cluster)["history"]] == [second[0]["metadata"]["name"]]


async def test_deleting_the_imagebuild_removes_every_child(cluster, basic_registry):
    async with operator():
        job = await first_job(cluster, basic_registry)
        await cluster.start_pod(job)
        await cluster.delete(*IB, "app")
        await jobs(cluster, 0)
    assert cluster.all("v1", "pods") == []
    assert [s["metadata"]["name"] for s in cluster.all("v1", "secrets")] == ["reg-creds"]


async def test_builds_sharing_a_local_cache_volume_run_one_at_a_time(cluster, basic_registry):
    cache = {"type": "local", "volume": {"claimName": "buildkit-state"}}
    async with operator():
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host, name="one", cache=cache))
        (first,) = await jobs(cluster, 1)
        await cluster.apply(image_build(basic_registry.host, name="two", cache=cache))
        await eventually(lambda: cond(cluster, "Reconciling", "two").get("reason") == reasons.WAITING_FOR_CACHE_VOLUME)
        assert f"in use by Job {first['metadata']['name']}" in cond(cluster, "Reconciling", "two")["message"]
        assert cond(cluster, "Stalled", "two")["status"] == "False"
        await cluster.finish(first, await cluster.start_pod(first), exit_code=0, message=metadata(DIGEST))
        await jobs(cluster, 2)  # started by the resync: no event of its own said the volume was free
        await eventually(lambda: any(e["involvedObject"]["name"] == "two" and e["reason"] == "BuildStarted"
                                     for e in cluster.events()), message="BuildStarted for two")


async def test_operator_restarts_at_any_point_never_duplicate_or_lose_a_build(cluster, basic_registry):
    for obj in login_objects("reg", basic_registry.host, "alice", BASIC_USERS["alice"]):
        await cluster.apply(obj)
    await cluster.apply(image_build(basic_registry.host))  # created while no operator runs
    async with operator():
        (job,) = await jobs(cluster, 1)
    async with operator():  # restarted after the Job was created
        await phase(cluster, "Pending")
        await eventually(lambda: len(cluster.ever_created("batch/v1", "jobs")) == 1)
    pod = await cluster.start_pod(job)
    await cluster.run_pod(pod)  # the pod runs while the operator is down
    async with operator():
        await phase(cluster, "Building")
    await cluster.finish(job, pod, exit_code=0, message=metadata(DIGEST))  # and finishes while it is down
    assert build_secrets(cluster)  # its credentials, which no watch brings to the operator
    async with operator():
        done = await phase(cluster, "Succeeded")
        assert not build_secrets(cluster)  # found by the listing at start, and deleted
    async with operator():  # restarted after completion: nothing new, nothing lost
        await eventually(lambda: status(cluster).get("phase") == "Succeeded")
        import asyncio

        await asyncio.sleep(1.5)  # at least one resync round
    assert status(cluster)["digest"] == done["digest"] == DIGEST
    assert status(cluster)["history"] == done["history"] and len(done["history"]) == 1
    assert cluster.ever_created("batch/v1", "jobs") == [job["metadata"]["name"]]


async def test_auto_strategy_builds_natively_where_nodes_exist_and_emulates_the_rest(cluster, basic_registry):
    await cluster.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-amd64", "namespace": None,
                                                                          "labels": {"kubernetes.io/arch": "amd64"}}})
    await cluster.fake.request("PATCH", "/api/v1/nodes/node-amd64/status",
                               json={"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    async with operator():
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host, platforms=["linux/amd64", "linux/arm64"],
                                        multiArch={"strategy": "auto"}))
        built = await jobs(cluster, 2)
    by_unit = {j["metadata"]["labels"]["kiln.dev/unit"]: j["spec"]["template"]["spec"] for j in built}
    assert by_unit["amd64"]["nodeSelector"]["kubernetes.io/arch"] == "amd64"
    assert "kubernetes.io/arch" not in by_unit["emulated"]["nodeSelector"]
    assert "--opt=platform=linux/arm64" in by_unit["emulated"]["containers"][0]["args"]


async def test_a_change_that_does_not_alter_the_image_keeps_the_build_and_its_ready(cluster, basic_registry):
    async with operator():
        job = await first_job(cluster, basic_registry)
        done = await succeed(cluster, job)
        await cluster.patch(*IB, "app", {"spec": {"historyLimit": 3}})
        await eventually(lambda: status(cluster).get("observedGeneration") == 2, message="generation 2 observed")
    assert cond(cluster, "Ready") | {"lastTransitionTime": None} == {
        **cond(cluster, "Ready"), "status": "True", "observedGeneration": 2, "lastTransitionTime": None}
    assert status(cluster)["buildID"] == done["buildID"] and status(cluster)["digest"] == done["digest"]
    assert cluster.ever_created("batch/v1", "jobs") == [job["metadata"]["name"]]


async def test_a_child_the_api_server_refuses_is_reported_in_status(cluster, basic_registry):
    async with operator():
        await ready_login(cluster, basic_registry)
        cluster.fake.fail("post", "/jobs", status=403, times=100)  # a quota, or an admission webhook, says no
        await cluster.apply(image_build(basic_registry.host))
        await eventually(lambda: cond(cluster, "Stalled").get("reason") == reasons.CREATE_REJECTED,
                         message=f"Stalled CreateRejected; have {cond(cluster, 'Stalled')}")
    assert cond(cluster, "Stalled")["message"].startswith("the API server refused to create Job app-g1-")
    assert "injected by the test" in cond(cluster, "Stalled")["message"]
    assert cond(cluster, "CredentialsReady")["status"] == "True" and cluster.jobs() == []
    assert [s["metadata"]["name"] for s in cluster.all("v1", "secrets")] == ["reg-creds"]  # no credentials left behind


async def test_every_list_and_watch_of_jobs_pods_and_secrets_carries_kilns_selector(cluster, basic_registry):
    """The API server filters them for kiln: its memory and work follow its own objects, not the cluster's."""
    async with operator():
        job = await first_job(cluster, basic_registry)
        await succeed(cluster, job)
    collections = [url for url in cluster.fake.reads
                   if url.path.rsplit("/", 1)[-1] in ("jobs", "pods", "secrets")]
    kinds = {url.path.rsplit("/", 1)[-1]: url.query.get("labelSelector") for url in collections}
    assert set(kinds) == {"jobs", "pods", "secrets"}, kinds  # each is listed and watched
    for url in collections:
        selector = url.query.get("labelSelector", "")
        assert selector in ("app.kubernetes.io/managed-by=kiln", "kiln.dev/registry-login=true"), url


async def test_a_retry_takes_the_credentials_the_login_holds_now_not_those_of_the_first_attempt(cluster, basic_registry):
    async with operator():
        (job,) = [await first_job(cluster, basic_registry, retries=1)]
        secret_name = next(v["secret"]["secretName"] for v in job["spec"]["template"]["spec"]["volumes"]
                           if v["name"] == "docker-config")
        await cluster.patch("v1", "secrets", "reg-creds", {"data": {"username": b64("bob"),
                                                                     "password": b64(BASIC_USERS["bob"])}})
        await eventually(lambda: (cluster.get("kiln.dev/v1alpha1", "registrylogins", "reg").get("status") or {})
                         .get("username") == "bob", message="the login checked with bob")
        await cluster.finish(job, await cluster.start_pod(job), exit_code=1, message="error: 503 Service Unavailable")
        await eventually(lambda: [j for j in cluster.jobs() if j["metadata"]["name"].endswith("-r1")], message="a retry")
        config = json.loads(base64.b64decode(cluster.get("v1", "secrets", secret_name)["data"][".dockerconfigjson"]))
    (entry,) = config["auths"].values()
    assert (entry["username"], entry["password"]) == ("bob", BASIC_USERS["bob"])
