"""decide for a RegistryLogin (pure): what is known of it -> whether to ask the registry, and its status.

The same shape as a build's: the controller gathers LoginFacts, decide_login returns a LoginDecision, which
may ask the registry to check the credentials first; the controller answers and decides again, then writes.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from kiln.build.credentials import Credentials, CredentialsProblem, ca_from_config_map, credentials_from_secret
from kiln.build.status import condition
from kiln.spec import labels, reasons
from kiln.spec.parse import LoginSpec
from kiln.spec.settings import Settings

# Logins that are not Ready are checked again at least this often (seconds), for registries that come back.
RETRY_INTERVAL = 60.0
# The operator watches only Secrets with this label (least privilege): a change to one is seen at once;
# a change to an unlabelled one at the next resync.
WATCHED_LABEL = labels.REGISTRY_LOGIN


@dataclass(frozen=True)
class Verify:
    """Ask the registry whether these credentials log in."""
    login: LoginSpec
    credentials: Credentials = field(repr=False)
    ca_pem: str | None = field(repr=False)


@dataclass(frozen=True)
class Refused:
    """The registry's answer when the credentials do not log in (or it could not be asked)."""
    reason: str
    message: str


@dataclass(frozen=True)
class LoginFacts:
    obj: dict  # the RegistryLogin as the watch delivered it
    spec: LoginSpec | None  # None when the spec is invalid
    problem: str | None  # why the spec is invalid
    secret: dict | None
    ca_config_map: dict | None
    settings: Settings
    now: datetime.datetime
    answer: str | Refused | None = None  # the auth scheme the registry used, or why it refused


@dataclass(frozen=True)
class LoginDecision:
    status: dict | None  # None: nothing changed that needs a write
    ask: Verify | None = None  # decide again with the registry's answer
    verified: bool = False  # the registry was asked (for the metrics)


def ready_condition(obj: dict) -> dict | None:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != (obj.get("metadata") or {}).get("generation"):
        return None  # not yet looked at since the last spec change
    return next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)


def verification_due(obj: dict, secret_version: str | None, settings: Settings, now: datetime.datetime) -> bool:
    status = obj.get("status") or {}
    ready = ready_condition(obj)
    if ready is None or status.get("secretVersion") != secret_version or not status.get("lastVerifiedTime"):
        return True
    age = (now - datetime.datetime.fromisoformat(status["lastVerifiedTime"].replace("Z", "+00:00"))).total_seconds()
    interval = settings.verify_interval if ready.get("status") == "True" else min(settings.verify_interval, RETRY_INTERVAL)
    return age >= interval


def secret_watched(secret: dict | None, login: LoginSpec, settings: Settings, generation: int) -> dict:
    """The SecretWatched condition: whether kiln sees changes to the login's Secret at once."""
    if (((secret or {}).get("metadata") or {}).get("labels") or {}).get(WATCHED_LABEL) == "true":
        return condition("SecretWatched", True, reasons.SECRET_WATCHED, f"changes to Secret {login.secret!r} are seen at once",
                         generation)
    return condition("SecretWatched", False, reasons.SECRET_NOT_LABELLED,
                     f"kiln watches only Secrets labelled {WATCHED_LABEL}=true, so it sees a change to Secret "
                     f"{login.secret!r} within {settings.resync_interval:g}s; to see it at once: "
                     f"kubectl label secret {login.secret} {WATCHED_LABEL}=true", generation)


def decide_login(facts: LoginFacts) -> LoginDecision:
    generation = facts.obj["metadata"].get("generation") or 1
    new: dict = {"observedGeneration": generation}
    login = facts.spec
    if login is None:
        return LoginDecision({**new, "conditions": [condition("Ready", False, reasons.INVALID_SPEC, facts.problem or "",
                                                               generation)]})
    new["server"] = login.server
    secret_version = (facts.secret or {}).get("metadata", {}).get("resourceVersion")
    if facts.answer is None and not verification_due(facts.obj, secret_version, facts.settings, facts.now):
        return LoginDecision(None)
    new["secretVersion"] = secret_version
    try:
        credentials = credentials_from_secret(facts.secret, login)
        new["username"] = credentials.username
        ca_pem = ca_from_config_map(facts.ca_config_map, login)
    except CredentialsProblem as problem:
        ready = condition("Ready", False, problem.reason, problem.message, generation)
        return LoginDecision({**new, "conditions": [ready, secret_watched(facts.secret, login, facts.settings, generation)]})
    if not login.verify:
        ready = condition("Ready", True, reasons.NOT_VERIFIED,
                          f"credentials for {credentials.username} read; not checked (spec.verify is false)", generation)
    elif facts.answer is None:
        return LoginDecision(None, ask=Verify(login, credentials, ca_pem))
    elif isinstance(facts.answer, Refused):
        new["lastVerifiedTime"] = labels.iso(facts.now)
        ready = condition("Ready", False, facts.answer.reason, facts.answer.message, generation)
    else:
        new.update(authScheme=facts.answer, lastVerifiedTime=labels.iso(facts.now))
        ready = condition("Ready", True, reasons.VERIFIED,
                          f"{credentials.username} logged in to {login.server} ({facts.answer})", generation)
    new["conditions"] = [ready, secret_watched(facts.secret, login, facts.settings, generation)]
    return LoginDecision(new, verified=login.verify)
