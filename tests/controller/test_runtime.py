"""Which watch events are news to kiln: its own writes' echoes and progress reports are not (no reconcile)."""
import asyncio
import inspect
import logging
import types

import kopf
import kubernetes
from kopf._core.intents.registries import _matches_metadata

from kiln.build.logins import WATCHED_LABEL
from kiln.build.platforms import build_plan
from kiln.build.render import render_build
from kiln.clients import watch_cache
from kiln.clients.kube import Kube
from kiln.controller import builds, handlers
from kiln.controller.runtime import Runtime
from kiln.spec.parse import parse_image_build, spec_identity
from kiln.spec.settings import Settings

from kubefake import eventually

BUILD = {"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
         "metadata": {"name": "app", "namespace": "team", "uid": "u", "generation": 1},
         "spec": {"registryLogins": ["reg"], "source": {"git": {"url": "https://git.example/app.git"}},
                  "output": {"image": "registry.example/team/app"}}}
JOB = {"metadata": {"name": "app-g1-abc", "namespace": "team"}, "spec": {"template": {}}}


def runtime() -> Runtime:
    return Runtime(Kube(kubernetes.client.Configuration()), Settings())


def served(**status) -> dict:
    return {**JOB, "metadata": {**JOB["metadata"], "uid": "u", "resourceVersion": "3"}, "status": status}


async def test_the_echo_of_a_job_kiln_created_and_its_progress_are_no_news():
    rt = runtime()
    rt.job_created("team", JOB)
    assert not rt.job_state_changed("team", served(), "ADDED")
    assert not rt.job_state_changed("team", served(startTime="t", active=1), "MODIFIED")
    assert not rt.job_state_changed("team", served(startTime="t", active=1, ready=1), "MODIFIED")


async def test_a_job_that_concludes_is_deleted_or_was_unknown_is_news_once():
    rt = runtime()
    assert rt.job_state_changed("team", served(active=1), "ADDED")  # after a restart: not one kiln just made
    assert not rt.job_state_changed("team", served(active=1), "MODIFIED")
    complete = served(conditions=[{"type": "Complete", "status": "True"}], succeeded=1)
    assert rt.job_state_changed("team", complete, "MODIFIED")
    assert not rt.job_state_changed("team", complete, "MODIFIED")
    deleting = {**complete, "metadata": {**complete["metadata"], "deletionTimestamp": "t"}}
    assert rt.job_state_changed("team", deleting, "MODIFIED")
    assert rt.job_state_changed("team", deleting, "DELETED")
    assert rt.job_state_changed("team", served(active=1), "ADDED")  # a new Job of the same name is news again


def test_every_kopf_handler_is_an_async_event_handler_or_index_so_no_diff_base_is_kept():
    """handlers.NoDiffBase keeps no last-handled state: on.create/on.update/timers would need it. A plain
    function would run in a thread for every event."""
    registry = kopf.get_default_registry()
    handled = [*registry._watching.get_all_handlers(), *registry._indexing.get_all_handlers()]
    assert len(handled) == 10 and all(inspect.iscoroutinefunction(h.fn) for h in handled)
    assert not registry._changing.get_all_handlers() and not registry._spawning.get_all_handlers()
    assert isinstance(handlers.NoDiffBase(), kopf.DiffBaseStorage)


def test_kopfs_per_object_info_is_off_unless_verbose_and_kilns_own_lines_and_kopfs_failures_show():
    root, objects = logging.getLogger(), logging.getLogger("kopf.objects")
    before = root.level, objects.level
    try:
        root.setLevel(logging.INFO)  # `kopf run`
        handlers.quiet_kopf_objects()
        assert not objects.isEnabledFor(logging.INFO) and objects.isEnabledFor(logging.WARNING)
        assert builds.LOG.isEnabledFor(logging.INFO) and logging.getLogger("kiln.logins").isEnabledFor(logging.INFO)
        objects.setLevel(logging.NOTSET)
        root.setLevel(logging.DEBUG)  # `kopf run --verbose`
        handlers.quiet_kopf_objects()
        assert objects.isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(before[0])
        objects.setLevel(before[1])


def test_no_watch_brings_a_builds_own_secret_and_a_login_secret_reaches_its_index_and_handler():
    """kiln's Secrets hold every login of a build: they stay out of the Secret watch's label selector, and out of
    its index and handler where a watch delivers them anyway (one made by an older kiln, which labelled it
    as a login's; an emulator without selectors)."""
    registry = kopf.get_default_registry()
    (handler,) = [h for h in registry._watching.get_all_handlers() if h.fn is handlers.secret_changed]
    (index,) = [h for h in registry._indexing.get_all_handlers() if h.fn is handlers.secrets_by_name]
    spec = parse_image_build(BUILD)
    (secret,) = [o for o in render_build(spec, [], build_plan(spec), Settings()) if o["kind"] == "Secret"]
    older = {**secret["metadata"]["labels"], WATCHED_LABEL: "true"}
    login_secret = {WATCHED_LABEL: "true", "app.kubernetes.io/managed-by": "Helm"}
    assert WATCHED_LABEL not in secret["metadata"]["labels"]  # the selector is that label's
    for labels, matched in ((secret["metadata"]["labels"], False), (older, False), (login_secret, True)):
        for pattern in (handler.labels, index.labels):
            assert _matches_metadata(pattern=pattern, content=labels, kwargs={}, cause=None) is matched


class Listing:
    """The API server's answers to lists: of Secrets (by the managed-by label), and of ImageBuilds."""

    def __init__(self, secrets: list[dict], builds: list[dict] = ()):
        self.secrets, self.builds, self.asked = secrets, list(builds), []

    async def list(self, url: str, labels: dict[str, str] | None = None) -> list[dict]:
        self.asked.append((url, labels))
        return self.builds if url.endswith("/imagebuilds") else self.secrets


async def test_at_start_kiln_knows_its_own_secrets_and_every_build_from_one_listing_of_each_per_namespace_served():
    spec = parse_image_build(BUILD)
    (secret,) = [o for o in render_build(spec, [], build_plan(spec), Settings()) if o["kind"] == "Secret"]
    no_build = {"metadata": {"name": "x", "namespace": "team", "labels": {"app.kubernetes.io/managed-by": "kiln"}}}
    finished = {**BUILD, "metadata": {**BUILD["metadata"], "name": "done"}, "status": {"phase": "Succeeded"}}
    listing = Listing([secret, no_build], [BUILD, finished])
    rt = Runtime(listing, Settings(namespaces=("team", "ci")))
    await rt.list_at_start()
    assert listing.asked == [("/api/v1/namespaces/team/secrets", watch_cache.MANAGED),
                             ("/apis/kiln.dev/v1alpha1/namespaces/team/imagebuilds", None),
                             ("/api/v1/namespaces/ci/secrets", watch_cache.MANAGED),
                             ("/apis/kiln.dev/v1alpha1/namespaces/ci/imagebuilds", None)]
    assert rt.cache.secrets("team", "app") == [{"metadata": secret["metadata"]}] and len(rt.cache.credentials) == 1
    # The build holds its place in its namespace's line (a finished one holds none), but is reconciled only once
    # its watch shows it.
    assert rt.cache.builds("team", listed=True) == [BUILD] and rt.cache.builds("team") == []
    assert rt.cache.build("team", "app") is None and rt.cache.everything("ImageBuild") == []
    rt.forget(("team", "app"))  # the ImageBuild is gone, and its Secret with it
    assert rt.cache.secrets("team", "app") == [] and rt.cache.credentials == {} and rt.cache.listed_builds == {}
    everywhere = Runtime(Listing([]), Settings())
    await everywhere.list_at_start()
    assert everywhere.kube.asked == [("/api/v1/secrets", watch_cache.MANAGED), ("/apis/kiln.dev/v1alpha1/imagebuilds", None)]


async def test_a_resync_round_forgets_the_builds_of_the_listing_at_start_that_no_watch_has_shown():
    rt = Runtime(Listing([], [BUILD]), Settings(namespaces=("team",), resync_interval=0.01))
    await rt.list_at_start()
    assert rt.cache.builds("team", listed=True) == [BUILD]
    resync = asyncio.create_task(handlers._resync(types.SimpleNamespace(runtime=rt), logging.getLogger("test")))
    try:
        await eventually(lambda: not rt.cache.listed_builds, timeout=5, interval=0.01, message="the listed build is dropped")
    finally:
        resync.cancel()


async def test_a_jobs_or_pods_event_reconciles_only_a_known_unfinished_build_and_nothing_else_is_remembered(monkeypatch):
    """Right after a start a Job's or Pod's event may come before its build's own: it is left to that build's
    event. A finished build's children change nothing either."""
    rt = runtime()
    reconciled = []

    async def build(runtime, namespace, name, logger):
        reconciled.append(name)

    monkeypatch.setattr(builds, "reconcile", build)
    memo = types.SimpleNamespace(runtime=rt)
    job = {**served(active=1), "metadata": {**served()["metadata"], "labels": {watch_cache.BUILD_LABEL: "app"},
                                            "ownerReferences": [{"kind": "ImageBuild", "name": "app", "controller": True}]}}
    pod = {"metadata": {"name": "app-g1-abc-x", "namespace": "team",
                        "labels": {watch_cache.BUILD_LABEL: "app", "job-name": job["metadata"]["name"]}},
           "status": {"containerStatuses": [{"name": "buildkit", "state": {"running": {}}}]}}
    rt.cache.indexes["jobs_by_build"] = {("team", "app"): [job]}

    async def events() -> None:
        await handlers.job_changed(type="MODIFIED", body=kopf.Body(job), namespace="team", memo=memo, logger=None)
        await handlers.pod_changed(type="MODIFIED", body=kopf.Body(pod), labels=pod["metadata"]["labels"],
                                   namespace="team", memo=memo, logger=None)

    await events()  # its build is not known yet
    assert reconciled == [] and not rt._job_states and not rt._pod_states
    rt.cache.saw_build(BUILD)
    await events()
    assert reconciled == ["app", "app"] and rt._job_states and rt._pod_states
    done = {**BUILD, "metadata": {**BUILD["metadata"], "resourceVersion": "9"}, "status": {
        "phase": "Succeeded", "observedGeneration": 1, "specIdentity": spec_identity(BUILD)}}
    rt.cache.saw_build(done)
    await events()
    assert reconciled == ["app", "app"] and not rt._job_states and not rt._pod_states


def test_every_index_the_watch_cache_reads_is_declared_to_kopf_under_that_name():
    registry = kopf.get_default_registry()
    declared = {h.id for h in registry._indexing.get_all_handlers()}
    assert set(watch_cache.INDEXES) <= declared
