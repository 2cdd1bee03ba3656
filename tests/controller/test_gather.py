"""gather: what a reconcile reads before decide, and how often: the Secrets a build mounts, for whom."""
import pytest

from kiln.controller.gather import _secret_values, observe
from kiln.spec.parse import parse_image_build
from kiln.spec.settings import Settings

BUILD = {"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
         "metadata": {"name": "app", "namespace": "team", "uid": "u", "generation": 1, "resourceVersion": "9"},
         "spec": {"source": {"git": {"url": "https://git.example/app.git"}}, "output": {"image": "r.example/app"},
                  "registryLogins": [], "secrets": [{"id": "npm", "secretRef": {"name": "npm-token", "key": "k"}}]}}
NPM = {"metadata": {"name": "npm-token", "resourceVersion": "41", "labels": {"kiln.dev/build-secret": "true"}},
       "data": {"k": "bnBtLXRva2VuLXZhbHVl"}}  # npm-token-value


class Reads:
    """A Reader with no other object than the build's Secret; counts what is read of it."""

    def __init__(self):
        self.metadata = self.values = 0

    async def jobs(self, namespace, labels):
        return []

    async def pods(self, namespace, labels):
        return []

    async def secrets(self, namespace, labels):
        return []

    async def logins(self, namespace):
        return []

    async def warm_by_default(self, namespace):
        return False

    async def secret_metadata(self, namespace, name):
        self.metadata += 1
        return {"metadata": NPM["metadata"]}

    async def secret(self, namespace, name):
        self.values += 1
        return NPM


async def test_the_mounted_secrets_versions_end_a_backoff_but_are_no_part_of_the_logins_revision():
    """Units record the logins' revision to tell a rotated password; a mounted Secret is read only before the
    start, so it must not change that revision between the start and the push."""
    reads = Reads()
    facts = await observe(reads, Settings(), BUILD)
    assert (facts.logins_revision, facts.mounts_revision, facts.mounts) == ("", "41", None)
    assert reads.metadata == 1 and reads.values == 0  # metadata only: what the Secret holds stays put


def _failed_pod(job: str) -> dict:
    return {"metadata": {"name": f"{job}-pod"}, "status": {"containerStatuses": [
        {"name": "buildkit", "state": {"terminated": {"exitCode": 1, "message": "npm-token-value"}}}]}}


@pytest.mark.parametrize(("recorded", "reads"), [(None, 1), ("Failed", 0)], ids=["new-failure", "already-recorded"])
async def test_a_mounted_secrets_values_are_read_only_for_a_failure_status_has_not_recorded(recorded, reads):
    counter = Reads()
    status = {"units": [{"job": "app-g1-x", "phase": recorded}]} if recorded else {}
    values = await _secret_values(counter, parse_image_build(BUILD), [], {"app-g1-x": _failed_pod("app-g1-x")}, status)
    assert counter.values == reads and values == (frozenset({"npm-token-value"}) if reads else frozenset())
