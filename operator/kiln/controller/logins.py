"""RegistryLogin: gather its Secret and CA, decide (build/logins.py, pure), ask the registry when decide asks
to check the credentials, and write the status."""
from __future__ import annotations

import dataclasses
import datetime
import logging

from kiln import API_VERSION, metrics
from kiln.build.logins import LoginDecision, LoginFacts, Refused, Verify, decide_login
from kiln.build.status import status_patch
from kiln.clients.kube import Kube, path
from kiln.clients.registry import AddressGuard, Registry, RegistryClient, RegistryError
from kiln.controller.runtime import Runtime
from kiln.spec import labels
from kiln.spec.parse import InvalidSpec, LoginSpec, parse_registry_login

LOG = logging.getLogger("kiln.logins")  # kopf's per-object INFO is off (handlers.configure)


def login_path(namespace: str | None, name: str | None = None) -> str:
    return path(API_VERSION, "registrylogins", namespace, name)


async def read_ca_config_map(kube: Kube, login: LoginSpec) -> dict | None:
    """The ConfigMap a login's caBundle names, if it names one and it exists."""
    return await kube.get(path("v1", "configmaps", login.namespace, login.ca_config_map)) if login.ca_config_map else None


async def verify(runtime: Runtime, question: Verify) -> str | Refused:
    """The auth scheme the registry used, or why the credentials did not log in."""
    login, settings = question.login, runtime.settings
    try:
        async with RegistryClient(Registry(login.server, login.insecure, question.ca_pem), question.credentials,
                                  timeout=settings.registry_timeout, guard=AddressGuard.of(settings)) as client:
            return (await client.verify()).scheme
    except RegistryError as exc:
        return Refused(exc.reason, exc.message)


async def gather(runtime: Runtime, obj: dict) -> LoginFacts:
    try:
        login, problem = parse_registry_login(obj), None
    except InvalidSpec as exc:
        login, problem = None, str(exc)
    secret = await runtime.reader().secret(login.namespace, login.secret) if login else None
    ca = await read_ca_config_map(runtime.kube, login) if login else None
    return LoginFacts(obj, login, problem, secret, ca, runtime.settings, datetime.datetime.now(datetime.UTC))


async def reconcile_login(runtime: Runtime, obj: dict) -> dict | None:
    """Bring the status of one RegistryLogin up to date; returns the status written, or None if unchanged."""
    facts = await gather(runtime, obj)
    decision: LoginDecision = decide_login(facts)
    if decision.ask is not None:
        decision = decide_login(dataclasses.replace(facts, answer=await verify(runtime, decision.ask)))
    if decision.status is None:
        return None
    ready = decision.status["conditions"][0]
    if decision.verified:
        metrics.VERIFICATIONS.labels(ready["reason"]).inc()
    written = await _write(runtime.kube, obj, decision.status)
    if written is not None:
        runtime.cache.wrote("RegistryLogin", written)  # builds looking at it next see this, not the watch's last word
        meta = obj["metadata"]
        LOG.info("RegistryLogin %s/%s: Ready=%s (%s)", meta["namespace"], meta["name"], ready["status"], ready["reason"])
    return written


async def _write(kube: Kube, obj: dict, new: dict) -> dict | None:
    """Patch status when it changed; returns the login as written, or None."""
    patch = status_patch(obj.get("status"), new, labels.iso(datetime.datetime.now(datetime.UTC)))
    meta = obj["metadata"]
    return None if patch is None else await kube.patch_status(login_path(meta["namespace"], meta["name"]), patch)
