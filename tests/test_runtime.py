"""Which watch events are news to kiln: its own writes' echoes and progress reports are not (no reconcile)."""
import inspect
import logging

import kopf
import kubernetes

from kiln import handlers
from kiln.apply import Kube
from kiln.runtime import Runtime
from kiln.settings import Settings

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
    assert len(handled) == 11 and all(inspect.iscoroutinefunction(h.fn) for h in handled)
    assert not registry._changing.get_all_handlers() and not registry._spawning.get_all_handlers()
    assert isinstance(handlers.NoDiffBase(), kopf.DiffBaseStorage)


def test_kopfs_line_for_each_successful_event_handler_is_dropped_and_failures_are_kept():
    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None)

    assert not handlers.not_routine(record(logging.INFO, "Handler 'job_changed' succeeded."))
    assert handlers.not_routine(record(logging.ERROR, "Handler 'job_changed' failed with an exception. Will ignore."))
    assert handlers.not_routine(record(logging.INFO, "ImageBuild team/app: BuildSucceeded: pushed"))
