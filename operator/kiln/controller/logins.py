"""RegistryLogin: read the Secret, check the credentials against the registry, report Ready."""
from __future__ import annotations

import datetime
import logging

from kiln import API_VERSION, metrics
from kiln.build.credentials import Credentials, CredentialsProblem, ca_from_config_map, credentials_from_secret
from kiln.build.status import condition, status_patch
from kiln.clients.kube import Kube, path
from kiln.clients.registry import Registry, RegistryClient, RegistryError
from kiln.controller.runtime import Runtime
from kiln.spec import labels, reasons
from kiln.spec.parse import InvalidSpec, LoginSpec, parse_registry_login
from kiln.spec.settings import Settings

# Logins that are not Ready are checked again at least this often (seconds), for registries that come back.
RETRY_INTERVAL = 60.0
LOG = logging.getLogger("kiln.logins")  # kopf's per-object INFO is off (handlers.configure)
# The operator watches only Secrets with this label (least privilege): a change to one is seen at once;
# a change to an unlabelled one at the next resync.
WATCHED_LABEL = labels.REGISTRY_LOGIN


def secret_watched(secret: dict | None, login: LoginSpec, settings: Settings, generation: int) -> dict:
    """The SecretWatched condition: whether kiln sees changes to the login's Secret at once."""
    if (((secret or {}).get("metadata") or {}).get("labels") or {}).get(WATCHED_LABEL) == "true":
        return condition("SecretWatched", True, reasons.SECRET_WATCHED, f"changes to Secret {login.secret!r} are seen at once",
                         generation)
    return condition("SecretWatched", False, reasons.SECRET_NOT_LABELLED,
                     f"kiln watches only Secrets labelled {WATCHED_LABEL}=true, so it sees a change to Secret "
                     f"{login.secret!r} within {settings.resync_interval:g}s; to see it at once: "
                     f"kubectl label secret {login.secret} {WATCHED_LABEL}=true", generation)


def login_path(namespace: str | None, name: str | None = None) -> str:
    return path(API_VERSION, "registrylogins", namespace, name)


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


async def read_ca_config_map(kube: Kube, login: LoginSpec) -> dict | None:
    """The ConfigMap a login's caBundle names, if it names one and it exists."""
    return await kube.get(path("v1", "configmaps", login.namespace, login.ca_config_map)) if login.ca_config_map else None


async def verify(login: LoginSpec, credentials: Credentials, ca_pem: str | None, settings: Settings) -> str:
    """The auth scheme the registry uses; raises RegistryError when the credentials do not work."""
    async with RegistryClient(Registry(login.server, login.insecure, ca_pem), credentials,
                              timeout=settings.registry_timeout, allow_link_local=settings.allow_link_local) as client:
        return (await client.verify()).scheme


async def reconcile_login(runtime: Runtime, obj: dict) -> dict | None:
    """Bring the status of one RegistryLogin up to date; returns the status written, or None if unchanged."""
    kube, settings = runtime.kube, runtime.settings
    meta = obj["metadata"]
    generation = meta.get("generation") or 1
    new: dict = {"observedGeneration": generation}
    try:
        login = parse_registry_login(obj)
    except InvalidSpec as exc:
        invalid = condition("Ready", False, reasons.INVALID_SPEC, str(exc), generation)
        return await _write(kube, obj, {**new, "conditions": [invalid]})
    new["server"] = login.server
    secret = await runtime.reader().secret(login.namespace, login.secret)
    secret_version = (secret or {}).get("metadata", {}).get("resourceVersion")
    now = datetime.datetime.now(datetime.UTC)
    if not verification_due(obj, secret_version, settings, now):
        return None
    new["secretVersion"] = secret_version
    try:
        credentials = credentials_from_secret(secret, login)
        new["username"] = credentials.username
        ca_pem = ca_from_config_map(await read_ca_config_map(kube, login), login)
        if login.verify:
            scheme = await verify(login, credentials, ca_pem, settings)
            new.update(authScheme=scheme, lastVerifiedTime=labels.iso(datetime.datetime.now(datetime.UTC)))
            message = f"{credentials.username} logged in to {login.server} ({scheme})"
            ready = condition("Ready", True, reasons.VERIFIED, message, generation)
        else:
            ready = condition("Ready", True, reasons.NOT_VERIFIED,
                              f"credentials for {credentials.username} read; not checked (spec.verify is false)", generation)
    except (CredentialsProblem, RegistryError) as exc:
        if isinstance(exc, RegistryError):
            new["lastVerifiedTime"] = labels.iso(datetime.datetime.now(datetime.UTC))
        ready = condition("Ready", False, exc.reason, exc.message, generation)
    if login.verify and "lastVerifiedTime" in new:
        metrics.VERIFICATIONS.labels(ready["reason"]).inc()
    new["conditions"] = [ready, secret_watched(secret, login, settings, generation)]
    written = await _write(kube, obj, new)
    if written is not None:
        runtime.cache.wrote("RegistryLogin", written)  # builds looking at it next see this, not the watch's last word
        LOG.info("RegistryLogin %s/%s: Ready=%s (%s)", login.namespace, login.name, ready["status"], ready["reason"])
    return written


async def _write(kube: Kube, obj: dict, new: dict) -> dict | None:
    """Patch status when it changed; returns the login as written, or None."""
    patch = status_patch(obj.get("status"), new, labels.iso(datetime.datetime.now(datetime.UTC)))
    meta = obj["metadata"]
    return None if patch is None else await kube.patch_status(login_path(meta["namespace"], meta["name"]), patch)
