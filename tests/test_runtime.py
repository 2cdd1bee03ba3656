"""Which watch events are news to kiln: its own writes' echoes and progress reports are not (no reconcile)."""
import kubernetes

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
