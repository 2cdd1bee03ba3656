"""The pool of registry sessions: one per registry and credentials, push checks remembered for a while,
idle sessions closed."""
import pytest

from kiln.build.credentials import Credentials, ResolvedLogin
from kiln.clients import registry_sessions
from kiln.clients.registry import RegistryClient
from kiln.spec.settings import Settings


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(registry_sessions.time, "monotonic", clock)
    return clock


@pytest.fixture
async def pool():
    pool = registry_sessions.Registries(Settings())
    yield pool
    await pool.close()


def login(password: str, server: str = "registry.example:5000") -> ResolvedLogin:
    return ResolvedLogin("reg", server, Credentials("pusher", password))


async def test_the_same_login_shares_a_session_and_a_changed_password_gets_its_own(pool, clock):
    first = await pool.client([login("one")], "registry.example:5000")
    assert await pool.client([login("one")], "registry.example:5000") is first
    assert await pool.client([login("two")], "registry.example:5000") is not first
    assert await pool.client([], "registry.example:5000") is not first  # anonymous: no credentials at all


async def test_a_session_unused_for_the_idle_time_is_closed_and_replaced(pool, clock):
    old = await pool.client([login("one")], "registry.example:5000")
    clock.now += registry_sessions.IDLE_SECONDS + 1
    new = await pool.client([login("two")], "registry.example:5000")  # the old password's session is idle
    assert old._session is None and new._session is not None
    assert await pool.client([login("one")], "registry.example:5000") is not old


async def test_an_allowed_push_is_checked_again_only_after_the_check_expires(pool, clock, monkeypatch):
    checks = []

    async def check_push(self, repository):
        checks.append(repository)

    monkeypatch.setattr(RegistryClient, "check_push", check_push)
    client = await pool.client([login("one")], "registry.example:5000")
    await pool.check_push(client, "team/app")
    await pool.check_push(client, "team/app")
    await pool.check_push(client, "team/other")
    clock.now += registry_sessions.PUSH_CHECK_SECONDS + 1
    await pool.check_push(client, "team/app")
    assert checks == ["team/app", "team/other", "team/app"]


async def test_a_refused_push_is_not_remembered(pool, clock, monkeypatch):
    checks = []

    async def check_push(self, repository):
        checks.append(repository)
        raise RuntimeError("denied")

    monkeypatch.setattr(RegistryClient, "check_push", check_push)
    client = await pool.client([login("one")], "registry.example:5000")
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await pool.check_push(client, "team/app")
    assert checks == ["team/app", "team/app"]
