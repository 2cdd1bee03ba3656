"""The build lifecycle in event orders that once made status untrue: the real operator against the emulator.

Each of these failed on the operator before decide.py (commit c49453b); see tests/build/test_decide.py for the
same stories as a table of the pure decision.
"""
import asyncio
import dataclasses
import types

import pytest
from test_operator_builds import (
    DIGEST,
    IB,
    cond,
    first_job,
    image_build,
    jobs,
    metadata,
    phase,
    ready_login,
    status,
)

from kiln.build.render import build_secret_name
from kiln.clients.watch_cache import Cache
from kiln.spec import reasons
from kiln.spec.parse import parse_image_build, spec_identity

from conftest import TOKEN_USERS, b64, ready_of
from kubefake import KubeFake, eventually, operator
from registries import push_image

pytestmark = [pytest.mark.operator, pytest.mark.registry, pytest.mark.kmock(cls=KubeFake)]
PLATFORMS = ["linux/amd64", "linux/arm64"]


def secret_of(spec) -> str:
    return build_secret_name(spec.name, spec.build_id)


async def native_jobs(cluster, registry, **spec) -> dict[str, dict]:
    await ready_login(cluster, registry)
    await cluster.apply(image_build(registry.host, platforms=PLATFORMS, multiArch={"strategy": "native"}, **spec))
    return {j["metadata"]["labels"]["kiln.dev/unit"]: j for j in await jobs(cluster, 2)}


async def test_a_native_unit_whose_job_is_deleted_by_hand_is_built_again_not_left_out_of_the_index(cluster, basic_registry):
    _, digests = await asyncio.to_thread(push_image, basic_registry, "alice", "team/app", PLATFORMS)
    async with operator():
        built = await native_jobs(cluster, basic_registry)
        await cluster.finish(built["amd64"], await cluster.start_pod(built["amd64"]), exit_code=0,
                             message=metadata(digests["linux/amd64"]))
        await cluster.delete("batch/v1", "jobs", built["arm64"]["metadata"]["name"])
        again = await eventually(lambda: [j for j in cluster.jobs() if j["metadata"]["name"].endswith("-arm64-r1")],
                                 message="the arm64 unit runs again")
        await phase(cluster, "Building")
        await cluster.finish(again[0], await cluster.start_pod(again[0]), exit_code=0,
                             message=metadata(digests["linux/arm64"]))
        done = await phase(cluster, "Succeeded")
    assert [p["platform"] for p in done["platforms"]] == PLATFORMS


async def test_a_native_unit_job_the_api_server_fails_to_create_once_is_created_on_the_retry(cluster, basic_registry,
                                                                                               monkeypatch):
    monkeypatch.setenv("KILN_RESYNC_INTERVAL", "3600")  # no resync to rescue it
    async with operator():
        await ready_login(cluster, basic_registry)
        cluster.fake.fail("post", "/jobs", status=500, after=1)  # the amd64 Job is created, the arm64 one fails once
        await cluster.apply(image_build(basic_registry.host, platforms=PLATFORMS, multiArch={"strategy": "native"}))
        built = await jobs(cluster, 2)
    assert sorted(j["metadata"]["labels"]["kiln.dev/unit"] for j in built) == ["amd64", "arm64"]
    assert len(cluster.ever_created("batch/v1", "jobs")) == 2


async def test_a_login_that_stops_being_ready_mid_build_does_not_fail_the_pushed_image(cluster, basic_registry):
    async with operator():
        job = await first_job(cluster, basic_registry)
        pod = await cluster.start_pod(job)
        await cluster.patch("v1", "secrets", "reg-creds", {"data": {"password": b64("rotated-but-wrong")}})
        await eventually(lambda: ready_of(cluster.get("kiln.dev/v1alpha1", "registrylogins", "reg")).get("status") == "False",
                         message="the login is not Ready")
        await cluster.finish(job, pod, exit_code=0, message=metadata(DIGEST))
        done = await phase(cluster, "Succeeded")
    assert done["digest"] == DIGEST


async def test_a_native_unit_that_reports_no_digest_fails_instead_of_building_forever(cluster, basic_registry):
    async with operator():
        built = await native_jobs(cluster, basic_registry, retries=0)
        await cluster.finish(built["amd64"], await cluster.start_pod(built["amd64"]), exit_code=0, message="")
        failed = await phase(cluster, "Failed")
        await jobs(cluster, 1)  # the arm64 unit is stopped: no index can be made without amd64
    assert failed["failure"]["reason"] == reasons.DIGEST_NOT_REPORTED
    assert failed["failure"]["message"].startswith("linux/amd64: the image was pushed by digest")


async def test_one_pod_that_reports_no_digest_takes_the_digest_of_its_tag_from_the_registry(cluster, basic_registry):
    index, _ = await asyncio.to_thread(push_image, basic_registry, "alice", "team/app", ["linux/amd64"], "v1")
    async with operator():
        job = await first_job(cluster, basic_registry)
        await cluster.finish(job, await cluster.start_pod(job), exit_code=0, message="")
        done = await phase(cluster, "Succeeded")
    assert done["digest"] == index and done["image"] == f"{basic_registry.host}/team/app@{index}"


async def test_superseding_a_running_build_leaves_no_credentials_of_it_behind(cluster, basic_registry):
    async with operator():
        old = await first_job(cluster, basic_registry)
        old_secret = secret_of(parse_image_build(cluster.build("app")))
        await cluster.run_pod(await cluster.start_pod(old))
        await cluster.patch(*IB, "app", {"spec": {"source": {"git": {"revision": "next"}}}})
        await eventually(lambda: status(cluster).get("observedGeneration") == 2, message="the new build started")
        await eventually(lambda: cluster.get("v1", "secrets", old_secret) is None, message="the old build's Secret is gone")
        new_secret = secret_of(_current_spec(cluster))
    assert new_secret != old_secret and cluster.get("v1", "secrets", new_secret) is not None
    assert [j["metadata"]["labels"]["kiln.dev/generation"] for j in cluster.jobs()] == ["2"]


def _current_spec(cluster):
    """The spec of the build status names (the build ID survives changes that keep the image)."""
    build = cluster.build("app")
    return dataclasses.replace(parse_image_build(build), build_id=build["status"]["buildID"])


async def test_an_edit_that_makes_a_running_build_invalid_stops_it_and_removes_its_credentials(cluster, basic_registry):
    async with operator():
        job = await first_job(cluster, basic_registry)
        secret = secret_of(parse_image_build(cluster.build("app")))
        await cluster.run_pod(await cluster.start_pod(job))
        await cluster.patch(*IB, "app", {"spec": {"source": {"url": "https://example.com/context.tgz"}}})  # two sources
        await phase(cluster, "Failed")
        await jobs(cluster, 0)
        await eventually(lambda: cluster.get("v1", "secrets", secret) is None, message="the Secret is gone")
    assert cond(cluster, "Ready")["reason"] == reasons.INVALID_SPEC
    assert status(cluster)["history"][0]["phase"] == "Cancelled"


async def test_an_api_error_in_a_reconcile_is_retried_for_that_object_not_at_the_next_resync(cluster, basic_registry,
                                                                                             monkeypatch):
    monkeypatch.setenv("KILN_RESYNC_INTERVAL", "3600")
    async with operator():
        await ready_login(cluster, basic_registry)
        cluster.fake.fail("get", "/imagebuilds/app", status=500, times=2)  # the reconcile the creation triggers fails
        await cluster.apply(image_build(basic_registry.host))
        await jobs(cluster, 1)
        await eventually(lambda: status(cluster).get("phase") == "Pending", timeout=10, message="the build started")


async def test_a_failed_listing_of_kilns_own_secrets_at_start_is_tried_again_within_seconds(cluster, basic_registry):
    cluster.fake.fail("get", "/secrets", status=500)  # the first read of Secrets is that listing: no watch is open yet
    async with operator():
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host))
        await jobs(cluster, 1)
    assert cluster.fake.faults[0][3] == 0  # it did fail once


async def test_a_stalled_build_asks_the_registry_again_only_after_its_backoff(cluster, token_registry):
    async with operator():
        await ready_login(cluster, token_registry, user="reader", password=TOKEN_USERS["reader"][0])
        await cluster.apply(image_build(token_registry.host))
        await eventually(lambda: cond(cluster, "CredentialsReady").get("reason") == reasons.PUSH_DENIED)
        asked = len([r for r in token_registry.issuer.requests if "push" in ",".join(r["scope"])])
        await asyncio.sleep(4)  # four resync rounds (KILN_RESYNC_INTERVAL=1), within the 10s backoff
        again = len([r for r in token_registry.issuer.requests if "push" in ",".join(r["scope"])])
    assert again == asked
    assert "kiln looks again at" in cond(cluster, "Stalled")["message"]
    assert status(cluster)["retry"]["reason"] == reasons.PUSH_DENIED


async def test_the_cache_volume_stays_busy_while_a_deleted_jobs_pod_still_runs(cluster, basic_registry):
    cache = {"type": "local", "volume": {"claimName": "buildkit-state"}}
    async with operator():
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host, name="one", cache=cache))
        (first,) = await jobs(cluster, 1)
        pod = await cluster.start_pod(first)
        await cluster.run_pod(pod)
        await cluster.patch("v1", "pods", pod["metadata"]["name"], {"metadata": {"ownerReferences": None}})
        await cluster.delete("batch/v1", "jobs", first["metadata"]["name"])  # the pod is still stopping
        await cluster.apply(image_build(basic_registry.host, name="two", cache=cache))
        await eventually(lambda: cond(cluster, "Reconciling", "two").get("reason") == reasons.WAITING_FOR_CACHE_VOLUME)
    assert f"in use by pod {pod['metadata']['name']}" in cond(cluster, "Reconciling", "two")["message"]
    assert not [j for j in cluster.jobs() if j["metadata"]["name"].startswith("two-")]


async def test_a_login_event_reaches_every_unfinished_build_even_while_builds_are_being_created(monkeypatch):
    """The builds kept grow while the handler walks them (their handler runs between awaits); a finished
    build is left alone, and so is one only kiln's listing at start has shown (it may be gone)."""
    from kiln.controller import builds

    finished = {"metadata": {"name": "done", "namespace": "default", "generation": 1, "resourceVersion": "4"},
                "spec": {}, "status": {"phase": "Succeeded", "observedGeneration": 1}}
    finished["status"]["specIdentity"] = spec_identity(finished)
    kept = Cache()
    kept.saw_build({"metadata": {"name": "app-1", "namespace": "default"}})
    kept.saw_build(finished)
    kept.listed_build({"metadata": {"name": "listed", "namespace": "default"}})
    started = []

    async def build(runtime, namespace, name, logger):
        started.append(name)
        kept.saw_build({"metadata": {"name": f"app-{len(started) + 1}", "namespace": "default"}})  # another arrives

    async def verified(runtime, body):
        return {"conditions": []}

    monkeypatch.setattr(builds, "reconcile", build)
    monkeypatch.setattr(builds, "reconcile_login", verified)
    body = {"metadata": {"namespace": "default", "name": "reg"}}
    await builds.login_changed(types.SimpleNamespace(cache=kept), body, logger=None)
    assert started == ["app-1"]


async def test_with_one_build_per_namespace_the_second_waits_queued_and_starts_when_the_first_ends(cluster, basic_registry,
                                                                                                   monkeypatch):
    monkeypatch.setenv("KILN_MAX_BUILDS_PER_NAMESPACE", "1")
    monkeypatch.setenv("KILN_RESYNC_INTERVAL", "60")  # the freed slot, not a periodic look, starts the second
    async with operator():
        await ready_login(cluster, basic_registry)
        await cluster.apply(image_build(basic_registry.host, name="one"))
        (first,) = await jobs(cluster, 1)
        await cluster.apply(image_build(basic_registry.host, name="two"))
        await eventually(lambda: cond(cluster, "Reconciling", "two").get("reason") == reasons.QUEUED,
                         message="the second build is queued")
        assert "place 1 in line" in cond(cluster, "Reconciling", "two")["message"]
        assert len(cluster.jobs()) == 1
        await asyncio.sleep(1)  # the second's next look is 15 s away now
        await cluster.finish(first, await cluster.start_pod(first), exit_code=0, message=metadata(DIGEST))
        await eventually(lambda: len(cluster.jobs()) == 2, timeout=5, message="the second build starts at once")


async def test_a_burst_of_builds_reconciled_one_at_a_time_all_start(cluster, basic_registry, monkeypatch):
    monkeypatch.setenv("KILN_MAX_CONCURRENT_RECONCILES", "1")
    async with operator():
        await ready_login(cluster, basic_registry)
        for i in range(5):
            await cluster.apply(image_build(basic_registry.host, name=f"app{i}"))
        await jobs(cluster, 5)


async def test_a_second_build_to_the_same_repository_reuses_the_registry_session_and_the_push_check(cluster,
                                                                                                 token_registry):
    def push_tokens():  # the issuer is shared by the session: count only this test's requests
        return [r for r in token_registry.issuer.requests[earlier:] if "push" in ",".join(r["scope"])]

    earlier = len(token_registry.issuer.requests)
    async with operator():
        await ready_login(cluster, token_registry, user="pusher", password=TOKEN_USERS["pusher"][0])
        await cluster.apply(image_build(token_registry.host, name="one"))
        await jobs(cluster, 1)
        pushes = push_tokens()
        await cluster.apply(image_build(token_registry.host, name="two"))
        await jobs(cluster, 2)
        again = push_tokens()
    assert len(pushes) == 1 and again == pushes  # no new token, no new upload check
