"""What the operator keeps of watched objects: enough to decide the same, and not a byte of pod spec more."""
import copy
import json

import kopf
import pytest

from kiln.build.decide import settled
from kiln.build.outcomes import observe_unit
from kiln.build.platforms import build_plan
from kiln.build.render import render_build
from kiln.clients import watch_cache
from kiln.clients.kube import KubeError
from kiln.clients.watch_cache import Cache, Reader, body, job_body, pod_body
from kiln.controller import handlers
from kiln.controller.gather import _namespace_load
from kiln.spec.parse import parse_image_build
from kiln.spec.settings import Settings

BUILD = {"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
         "metadata": {"name": "app", "namespace": "team", "uid": "u-1", "generation": 1},
         "spec": {"registryLogins": [], "source": {"git": {"url": "https://git.example/app.git"}},
                  "output": {"image": "r.example/team/app", "tags": ["v1"]}}}
SECRET, JOB = render_build(parse_image_build(BUILD), [], build_plan(parse_image_build(BUILD)), Settings())
MANAGED_FIELDS = [{"manager": "kube-controller-manager", "fieldsV1": {"f:status": {}}}]
DIGEST = "sha256:" + "ab" * 32


def as_served(obj: dict, status: dict) -> dict:
    return {**obj, "metadata": {**obj["metadata"], "uid": "j-1", "resourceVersion": "7", "managedFields": MANAGED_FIELDS},
            "status": status}


def pod_of(job: dict, state: dict, **status) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": job["metadata"]["name"] + "-x", "labels": job["spec"]["template"]["metadata"]["labels"],
                         "managedFields": MANAGED_FIELDS},
            "spec": job["spec"]["template"]["spec"],
            "status": {"hostIP": "10.0.0.1", "qosClass": "Burstable", **status, "containerStatuses": [
                {"name": "buildkit", "image": "moby/buildkit", "imageID": "sha256:1", "restartCount": 0, "state": state,
                 "volumeMounts": [{"name": "out", "mountPath": "/kiln/out"}]}]}}


COMPLETE = {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2026-11-29T10:00:00Z", "succeeded": 1}
FAILED = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], "failed": 1}
CASES = {
    "running": ({"active": 1}, {"running": {"startedAt": "x"}}, {"phase": "Running"}),
    "pushed": (COMPLETE, {"terminated": {"exitCode": 0, "message": json.dumps({"containerimage.digest": DIGEST})}},
               {"phase": "Succeeded"}),
    "dockerfile-error": (FAILED, {"terminated": {"exitCode": 1, "message": "did not complete successfully"}}, {"phase": "Failed"}),
    "evicted": (FAILED, {"terminated": {"exitCode": 137}}, {"phase": "Failed", "reason": "Evicted", "message": "low memory"}),
    "pull-backoff": ({"active": 1}, {"waiting": {"reason": "ImagePullBackOff", "message": "denied"}}, {"phase": "Pending"}),
}


@pytest.mark.parametrize("case", CASES)
def test_kept_jobs_and_pods_decide_exactly_what_whole_ones_do(case):
    job_status, state, pod_status = CASES[case]
    job, pod = as_served(JOB, job_status), pod_of(JOB, state, **pod_status)
    assert observe_unit(job_body(job), pod_body(pod)) == observe_unit(job, pod)


def test_a_kept_job_or_pod_has_no_pod_spec_and_no_managed_fields():
    job, pod = job_body(as_served(JOB, COMPLETE)), pod_body(pod_of(JOB, {"running": {}}))
    assert set(job) == set(pod) == {"metadata", "status"}
    assert "managedFields" not in job["metadata"] and "managedFields" not in pod["metadata"]
    assert job["metadata"]["labels"] == JOB["metadata"]["labels"] and job["status"] == COMPLETE
    assert pod["status"]["containerStatuses"] == [{"name": "buildkit", "state": {"running": {}}}]


def test_kilns_own_secrets_are_known_from_its_writes_without_their_credentials_until_deleted():
    cache = Cache()
    cache.made_secret("team", as_served(SECRET, {}))
    (kept,) = cache.secrets("team", "app")
    assert kept == {"metadata": {k: v for k, v in as_served(SECRET, {})["metadata"].items() if k != "managedFields"}}
    assert cache.secrets("team", "web") == [] and cache.secrets("other", "app") == []
    cache.deleted_secret("other", SECRET["metadata"]["name"])  # another namespace's of the same name
    assert len(cache.secrets("team", "app")) == 1
    cache.deleted_secret("team", SECRET["metadata"]["name"])
    assert cache.secrets("team", "app") == [] and cache.credentials == {}


def test_kilns_own_write_is_read_until_the_watch_catches_up_and_then_forgotten():
    cache = Cache()
    meta = {"name": "app", "namespace": "team"}
    cache.saw_build({"metadata": {**meta, "resourceVersion": "5"}, "status": {}})
    cache.wrote("ImageBuild", {"metadata": {**meta, "resourceVersion": "6"}, "status": {"phase": "Building"}})
    assert cache.build("team", "app")["status"]["phase"] == "Building"
    echo = {"metadata": {**meta, "resourceVersion": "6"}, "status": {"phase": "Building"}}
    cache.saw_build(echo)
    assert cache.build("team", "app") == echo
    assert cache.echo("ImageBuild", "team", "app", "6") and cache.written == {}
    assert not cache.echo("ImageBuild", "team", "app", "6")  # the next event of that version is someone else's


def test_a_write_whose_echo_was_overtaken_is_forgotten_once_the_watch_is_past_it():
    cache = Cache()
    meta = {"name": "app", "namespace": "team"}
    cache.wrote("ImageBuild", {"metadata": {**meta, "resourceVersion": "6"}, "status": {"phase": "Building"}})
    newer = {"metadata": {**meta, "resourceVersion": "9"}, "status": {"phase": "Succeeded"}}
    cache.saw_build(newer)
    assert cache.build("team", "app") == newer and cache.written == {}


def test_a_kept_imagebuild_has_all_but_the_api_servers_and_kubectls_bookkeeping():
    applied = {**BUILD, "metadata": {**BUILD["metadata"], "managedFields": MANAGED_FIELDS, "annotations": {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(BUILD), "kiln.dev/rebuild": "1"}}}
    kept = body(applied)
    assert kept == {**BUILD, "metadata": {**BUILD["metadata"], "annotations": {"kiln.dev/rebuild": "1"}}}
    assert parse_image_build(kept) == parse_image_build(applied)


def test_kept_objects_share_field_names_and_short_values_but_not_long_ones():
    first, second = (job_body(json.loads(json.dumps(as_served(JOB, COMPLETE)))) for _ in range(2))
    assert first == second
    assert next(iter(first["metadata"]["labels"])) is next(iter(second["metadata"]["labels"]))
    assert first["status"]["conditions"][0]["type"] is second["status"]["conditions"][0]["type"]
    message = "x" * 300
    pods = [pod_body(json.loads(json.dumps(pod_of(JOB, {"terminated": {"message": message}})))) for _ in range(2)]
    assert pods[0] == pods[1]
    assert pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["message"] is not \
        pods[1]["status"]["containerStatuses"][0]["state"]["terminated"]["message"]


def test_a_finished_build_is_settled_until_it_is_edited_or_given_a_new_rebuild_token():
    """Settled builds are skipped on restart and in the resync: the rebuild token and an edit must still count."""
    served = {**BUILD, "metadata": {**BUILD["metadata"], "resourceVersion": "9"}}
    done = {**served, "status": {"phase": "Succeeded", "observedGeneration": 1,
                                 "specIdentity": parse_image_build(served).identity}}
    assert settled(done) and settled(kopf.Body(copy.deepcopy(done)))  # the plain cache copy and kopf's view of it
    rebuilt = {**done, "metadata": {**done["metadata"], "annotations": {"kiln.dev/rebuild": "again"}}}
    edited = {**done, "metadata": {**done["metadata"], "generation": 2}}
    running = {**done, "status": {**done["status"], "phase": "Building"}}
    assert not any(settled(b) for b in (rebuilt, edited, running))


async def test_a_builds_children_are_found_by_its_build_and_a_logins_secret_by_its_name():
    """The indexes are keyed as the reconcile of one build reads them; another build's objects are not in its way."""
    other = {**BUILD, "metadata": {**BUILD["metadata"], "name": "web", "uid": "u-2"}}
    other_secret, other_job = render_build(parse_image_build(other), [], build_plan(parse_image_build(other)), Settings())
    login_secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {  # a login's Secret named as a build's label
        "name": "app", "namespace": "team", "labels": {"kiln.dev/registry-login": "true"}}, "data": {"password": "cHc="}}
    indexes = {"logins_by_namespace": {}, "jobs_by_build": {}, "pods_by_build": {}, "secrets_by_name": {}}

    async def watched(index, *objects):
        for obj in objects:
            for key, value in (await getattr(handlers, index)(namespace="team", name=obj["metadata"]["name"],
                                                              body=kopf.Body(obj))).items():
                indexes[index].setdefault(key, []).append(value)

    await watched("jobs_by_build", as_served(JOB, {}), as_served(other_job, {}))
    await watched("secrets_by_name", login_secret)
    cache = Cache(indexes=indexes)
    cache.saw_build(BUILD)
    cache.saw_build(other)
    cache.made_secret("team", SECRET)
    cache.made_secret("team", other_secret)
    assert cache.build("team", "web")["metadata"]["uid"] == "u-2" and cache.build("team", "api") is None
    assert [j["metadata"]["name"] for j in cache.jobs("team", "app")] == [JOB["metadata"]["name"]]
    assert len(cache.jobs("team")) == 2  # the whole namespace, for the cache volume's users
    assert [s["metadata"]["name"] for s in cache.secrets("team", "app")] == [SECRET["metadata"]["name"]]
    assert cache.secret("team", "app")["data"] == {"password": "cHc="}
    assert cache.secret("team", SECRET["metadata"]["name"]) is None  # a build's own Secret is no login's
    cache.created("team", other_job)  # made, not yet seen: counted with its own build only
    seen = indexes["jobs_by_build"].pop(("team", "web"))
    assert [j["metadata"]["name"] for j in cache.jobs("team", "web")] == [other_job["metadata"]["name"]]
    assert [j["metadata"]["name"] for j in cache.jobs("team", "app")] == [JOB["metadata"]["name"]]
    indexes["jobs_by_build"][("team", "web")] = seen  # the watch shows it: the expectation is done with
    assert len(cache.jobs("team", "web")) == 1 and cache.expected == {}


async def test_a_build_whose_job_was_just_created_counts_as_running_before_its_status_says_so():
    """kiln writes a build's status after creating its Job: a reconcile of another build in between must not take
    it for one waiting in line (KILN_MAX_BUILDS_PER_NAMESPACE)."""
    first = {**BUILD, "metadata": {**BUILD["metadata"], "creationTimestamp": "2026-11-29T10:00:00Z"}}
    second = {**BUILD, "metadata": {**BUILD["metadata"], "name": "web", "uid": "u-2",
                                    "creationTimestamp": "2026-11-29T10:00:01Z"}}
    cache = Cache(indexes={"jobs_by_build": {}})
    cache.saw_build(first)
    cache.saw_build(second)
    reader = Reader(None, cache)
    assert await _namespace_load(reader, second) == (0, 1)  # not started: it is in line before the second
    cache.created("team", JOB)  # its Job is made; its status is not written yet
    assert await _namespace_load(reader, second) == (1, 0)


async def test_right_after_a_start_a_build_only_kilns_listing_has_shown_keeps_its_place_in_line():
    """The first build reconciled after a start may come before its namespace's other builds reach their handler:
    kiln's listing at start says who is in line before it. Such a build is not reconciled until its watch shows it
    (it may have been deleted since), and the resync drops what the watch never showed."""
    first = {**BUILD, "metadata": {**BUILD["metadata"], "creationTimestamp": "2026-11-29T10:00:00Z"}}
    second = {**BUILD, "metadata": {**BUILD["metadata"], "name": "web", "uid": "u-2",
                                    "creationTimestamp": "2026-11-29T10:00:01Z"}}
    cache = Cache(indexes={"jobs_by_build": {}})
    reader = Reader(None, cache)
    cache.listed_build(first)
    cache.listed_build(second)
    cache.saw_build(second)
    assert await _namespace_load(reader, second) == (0, 1)  # the first is ahead, though no event brought it yet
    assert cache.build("team", "app") is None and [b["metadata"]["name"] for b in cache.everything("ImageBuild")] == ["web"]
    cache.saw_build(first)
    assert await _namespace_load(reader, second) == (0, 1) and cache.listed_builds == {}
    cache.build_gone("team", "app")
    cache.listed_build(first)  # listed, then deleted before kopf's own listing: no event will ever bring it
    cache.unseen_gone()  # the resync's rounds: the watch has shown by then every build that still exists
    assert await _namespace_load(reader, second) == (0, 0)


async def test_the_namespace_line_goes_by_when_each_build_was_asked_for_not_when_its_imagebuild_was_made():
    """An old ImageBuild edited for each commit takes its place behind builds asked for before the edit."""
    old = {**BUILD, "metadata": {**BUILD["metadata"], "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 7}}
    old["status"] = {"specIdentity": "an earlier spec", "requestTime": "2026-01-01T00:00:00Z", "phase": "Succeeded"}
    newer = {**BUILD, "metadata": {**BUILD["metadata"], "name": "web", "uid": "u-2",
                                   "creationTimestamp": "2026-11-29T10:00:00Z"}}
    newer["status"] = {"specIdentity": parse_image_build(newer).identity, "requestTime": "2026-11-29T10:00:01Z",
                       "phase": "Pending", "conditions": [{"type": "Reconciling", "reason": "Queued"}]}
    cache = Cache(indexes={"jobs_by_build": {}})
    for build in (old, newer):
        cache.saw_build(build)
    reader = Reader(None, cache)
    assert await _namespace_load(reader, old) == (0, 1)  # edited just now: behind the one queued since 10:00:01
    assert await _namespace_load(reader, newer) == (0, 0)


class _Namespace:
    """The API server as far as one namespace's metadata goes."""

    def __init__(self, answer):
        self.answer, self.asked = answer, 0

    async def get(self, url: str, metadata_only: bool = False):
        assert (url, metadata_only) == ("/api/v1/namespaces/team", True)
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_a_namespaces_default_builder_is_read_again_only_after_a_while_and_unreadable_means_none(monkeypatch):
    kube = _Namespace({"metadata": {"labels": {"kiln.dev/default-builder": "warm"}}})
    reader = Reader(kube, Cache())
    assert await reader.warm_by_default("team") and await reader.warm_by_default("team")
    assert kube.asked == 1  # a reconcile of each of its builds does not ask again
    kube.answer = {"metadata": {"labels": {"kiln.dev/default-builder": "pod"}}}
    monkeypatch.setattr(watch_cache, "NAMESPACE_SECONDS", 0.0)
    assert not await reader.warm_by_default("team") and kube.asked == 2
    kube.answer = KubeError(403, "namespaces \"team\" is forbidden")  # an install that may not read it
    assert not await reader.warm_by_default("team") and kube.asked == 3
    kube.answer = KubeError(500, "etcd is down")
    with pytest.raises(KubeError):  # not taken for "no default": the reconcile is tried again
        await reader.warm_by_default("team")
