"""One registry session per registry and set of credentials, reused across builds, and push checks
remembered for a while: a build start costs no new connection, token or upload check when an earlier
build just made them. Sessions unused for a while are closed, so changed or deleted logins do not pile up."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from kiln.build.credentials import ResolvedLogin
from kiln.clients.registry import AddressGuard, Registry, RegistryClient
from kiln.spec.settings import Settings

PUSH_CHECK_SECONDS = 300.0  # how long an allowed push is taken as still allowed (a revoked one: the build says so)
IDLE_SECONDS = 600.0  # a session unused this long is closed


def _identity(host: str, login: ResolvedLogin | None) -> tuple:
    """Who talks to which registry how; the password only as a digest."""
    if login is None:
        return (host,)
    secret = hashlib.sha256(f"{login.credentials.username}\0{login.credentials.password}\0{login.ca_pem}".encode())
    return host, login.insecure, secret.hexdigest()


@dataclass
class _Session:
    client: RegistryClient
    used: float
    pushes: dict[str, float] = field(default_factory=dict)  # repository -> when a push was last found allowed


@dataclass
class Registries:
    settings: Settings
    _sessions: dict[tuple, _Session] = field(default_factory=dict)

    async def client(self, logins: list[ResolvedLogin], host: str) -> RegistryClient:
        """The open session with host, with the credentials of the login for it (if any)."""
        now = time.monotonic()
        await self._close_idle(now)
        login = next((item for item in logins if item.server == host), None)
        key = _identity(host, login)
        if key not in self._sessions:
            client = RegistryClient(Registry(host, bool(login and login.insecure), login.ca_pem if login else None),
                                    login.credentials if login else None, timeout=self.settings.registry_timeout,
                                    guard=AddressGuard.of(self.settings))
            client.open()
            self._sessions[key] = _Session(client, now)
        session = self._sessions[key]
        session.used = now
        return session.client

    async def check_push(self, client: RegistryClient, repository: str) -> None:
        """client.check_push, unless it found the push allowed within PUSH_CHECK_SECONDS."""
        session = next(item for item in self._sessions.values() if item.client is client)
        when = session.pushes.get(repository)
        if when is not None and time.monotonic() - when < PUSH_CHECK_SECONDS:
            return
        await client.check_push(repository)
        session.pushes[repository] = time.monotonic()

    async def _close_idle(self, now: float) -> None:
        for key in [key for key, session in self._sessions.items() if now - session.used > IDLE_SECONDS]:
            await self._sessions.pop(key).client.close()

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.client.close()
        self._sessions.clear()
