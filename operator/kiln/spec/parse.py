"""parse: an ImageBuild or RegistryLogin dict -> a typed, immutable spec.

The API server already applied the CRD's schema, defaults and CEL rules; the
same checks run here because objects also arrive from files (`kiln render`) and
from servers that do not validate. Bad input raises InvalidSpec naming the field.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from kiln.spec import labels
from kiln.spec.addresses import forbidden_host
from kiln.spec.references import (
    CREDENTIALS_IN_QUERY,
    CREDENTIALS_IN_URL,
    IMAGE_PATTERN,
    IMAGE_REF_PATTERN,
    OPTION_AS_HOST,
    PLATFORM_PATTERN,
    SERVER_PATTERN,
    TAG_PATTERN,
    TAGGED_REF_PATTERN,
    normalize_server,
)
from kiln.spec.schema import go_pattern, structural_errors

REBUILD_ANNOTATION = labels.REBUILD
CACHE_TYPES = ("registry", "local", "inline", "none")
STRATEGIES = ("qemu", "native", "auto")
PROVENANCE_MODES = ("off", "min", "max")
# Build arguments BuildKit reads as attestation settings: spec.attestations says them, once.
_ATTESTATION_ARGS = re.compile(r"^BUILDKIT_(ATTEST_|SBOM_SCAN_)", re.IGNORECASE)
_BUILD_ARG = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_GIT_URL = re.compile(r"^(https://|http://|ssh://|git://|git@)[^\s#]+$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]*$")
_TARBALL_URL = re.compile(r"^https?://[^\s]+$")
_TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class InvalidSpec(ValueError):
    """A spec the operator cannot build. `field` is the dotted path users see in kubectl explain."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class GitSource:
    url: str
    revision: str | None = None
    secret: str | None = None


@dataclass(frozen=True)
class VolumeSource:
    claim: str
    path: str = "."


@dataclass(frozen=True)
class ConfigMapSource:
    name: str


@dataclass(frozen=True)
class UrlSource:
    url: str


@dataclass(frozen=True)
class Source:
    origin: GitSource | VolumeSource | ConfigMapSource | UrlSource
    context_dir: str = "."
    dockerfile: str = "Dockerfile"


@dataclass(frozen=True)
class BuildSecret:
    id: str
    secret: str
    key: str


@dataclass(frozen=True)
class Output:
    image: str
    tags: tuple[str, ...] = ("latest",)
    push: bool = True

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(f"{self.image}:{tag}" for tag in self.tags)


@dataclass(frozen=True)
class Cache:
    type: str = "registry"
    ref: str | None = None  # export/import ref for registry cache; defaulted by parse
    mode: str = "max"
    import_refs: tuple[str, ...] = ()
    volume: str | None = None  # PVC holding BuildKit's state for local cache


@dataclass(frozen=True)
class Builder:
    resources: dict = field(default_factory=dict, hash=False)
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[dict, ...] = field(default=(), hash=False)
    service_account: str | None = None
    user_namespaces: bool = False
    # Build on the namespace's warm builder, a long-running BuildKit daemon (build/builders.py), not in a pod of its own.
    warm: bool = False


@dataclass(frozen=True)
class Attestations:
    provenance: str = "min"  # SLSA provenance: off, min or max (with build arguments and the build's steps)
    sbom: bool = False
    sbom_generator: str | None = None  # None: the operator's (KILN_SBOM_GENERATOR)
    scan_stages: bool = False  # the SBOM covers every stage, not only the final one


@dataclass(frozen=True)
class Signing:
    key_secret: str | None = None  # a cosign key pair Secret: cosign.key and cosign.password


@dataclass(frozen=True)
class BuildSpec:
    namespace: str
    name: str
    uid: str
    generation: int
    rebuild: str
    registry_logins: tuple[str, ...] | None
    source: Source
    output: Output
    build_args: tuple[tuple[str, str], ...] = ()
    target: str | None = None
    secrets: tuple[BuildSecret, ...] = ()
    platforms: tuple[str, ...] = ()
    strategy: str = "qemu"
    cache: Cache = Cache()
    builder: Builder = Builder()
    timeout_seconds: int = 1800
    retries: int = 1
    history_limit: int = 5
    suspend: bool = False
    attestations: Attestations = Attestations()
    signing: Signing = Signing()
    # What the build is: the spec (but for knobs that do not change the image) and the rebuild token.
    identity: str = ""
    # Names this build in Jobs and status; a new identity at a new generation gets a new one.
    build_id: str = ""


@dataclass(frozen=True)
class LoginSpec:
    namespace: str
    name: str
    generation: int
    server: str  # normalized host[:port]
    secret: str
    insecure: bool = False
    verify: bool = True
    ca_config_map: str | None = None
    ca_key: str = "ca.crt"


# Changing these does not make a new image, so it does not start a new build.
_NOT_IDENTITY = ("suspend", "historyLimit")


def build_id(uid: str, generation: int, rebuild: str) -> str:
    """g<generation>-<hash of object, generation and rebuild token>: unique, deterministic, readable."""
    return f"g{generation}-" + hashlib.sha256(f"{uid}/{generation}/{rebuild}".encode()).hexdigest()[:6]


def spec_identity(obj: dict) -> str:
    """What the build is: the spec but for the knobs that do not change the image, and the rebuild token."""
    spec, meta = obj.get("spec"), obj.get("metadata") or {}
    rebuild = (meta.get("annotations") or {}).get(REBUILD_ANNOTATION, "")
    kept = {k: v for k, v in spec.items() if k not in _NOT_IDENTITY} if isinstance(spec, Mapping) else spec
    return hashlib.sha256(json.dumps([kept, rebuild], sort_keys=True).encode()).hexdigest()[:16]


def parse_image_build(obj: dict, warm_default: bool = False) -> BuildSpec:
    """warm_default: the namespace makes warm builders the default (labels.DEFAULT_BUILDER), for a spec that
    leaves spec.builder.warm unset and that a warm builder can build."""
    meta = obj.get("metadata") or {}
    spec = _mapping(obj.get("spec"), "spec")
    rebuild = (meta.get("annotations") or {}).get(REBUILD_ANNOTATION, "")
    output = _parse_output(_mapping(spec.get("output"), "spec.output", required=True))
    platforms = tuple(_strings(spec.get("platforms", []), "spec.platforms"))
    for i, platform in enumerate(platforms):
        _match(platform, PLATFORM_PATTERN, f"spec.platforms[{i}]", "must be os/arch[/variant], e.g. linux/arm64")
    _unique(platforms, "spec.platforms")
    if "platforms" in spec and not platforms:
        raise InvalidSpec("spec.platforms", "must list at least one platform")
    multi_arch = _mapping(spec.get("multiArch", {}), "spec.multiArch")
    if multi_arch and not platforms:
        raise InvalidSpec("spec.multiArch", "multiArch needs spec.platforms")
    strategy = _choice(multi_arch.get("strategy", "qemu"), STRATEGIES, "spec.multiArch.strategy")
    if strategy != "qemu" and (spec.get("cache") or {}).get("type") == "local":
        raise InvalidSpec("spec.cache.type", "cache.type local keeps one builder's state, and native or auto builds run "
                                             "several builders; use multiArch.strategy qemu or a registry cache")
    logins = spec.get("registryLogins")
    if logins is not None:
        logins = tuple(_strings(logins, "spec.registryLogins"))
        _unique(logins, "spec.registryLogins")
    build_args = _mapping(spec.get("buildArgs", {}), "spec.buildArgs")
    for name, value in build_args.items():
        if not isinstance(name, str) or not _BUILD_ARG.fullmatch(name):
            raise InvalidSpec(f"spec.buildArgs.{name}",
                              "names must be letters, digits and underscores, not starting with a digit")
        if not isinstance(value, str):
            raise InvalidSpec(f"spec.buildArgs.{name}", "must be a string (quote numbers in YAML)")
        if "\0" in value:
            raise InvalidSpec(f"spec.buildArgs.{name}", "must not contain a NUL character")
        if _ATTESTATION_ARGS.match(name):
            raise InvalidSpec(f"spec.buildArgs.{name}", "BuildKit reads this as an attestation setting: use "
                                                        "spec.attestations")
    target = spec.get("target")
    if target is not None:
        _match(target, _TARGET.pattern, "spec.target", "must be a Dockerfile stage name")
    _schema("ImageBuild", obj)
    source = _parse_source(_mapping(spec.get("source"), "spec.source", required=True))
    cache = _parse_cache(_mapping(spec.get("cache", {}), "spec.cache"), output)
    builder = _parse_builder(_mapping(spec.get("builder", {}), "spec.builder"),
                             warm_default and not isinstance(source.origin, VolumeSource))
    if builder.warm and isinstance(source.origin, VolumeSource):
        raise InvalidSpec("spec.builder.warm", "a warm builder cannot read a workspace volume (only a pod that mounts "
                                               "it can): build from git, a URL or a ConfigMap, or set warm false")
    return BuildSpec(
        namespace=meta.get("namespace") or "default",
        name=_name(meta.get("name"), "metadata.name"),
        uid=meta.get("uid") or "",
        generation=int(meta.get("generation") or 1),
        rebuild=rebuild,
        registry_logins=logins,
        source=source,
        output=output,
        build_args=tuple(sorted(build_args.items())),
        target=target,
        secrets=_parse_secrets(spec.get("secrets", [])),
        platforms=platforms,
        strategy=strategy,
        cache=cache,
        builder=builder,
        timeout_seconds=parse_duration(spec.get("timeout", "30m"), "spec.timeout"),
        retries=_integer(spec.get("retries", 1), "spec.retries", 0, 10),
        history_limit=_integer(spec.get("historyLimit", 5), "spec.historyLimit", 1, 100),
        suspend=_boolean(spec.get("suspend", False), "spec.suspend"),
        attestations=_parse_attestations(_mapping(spec.get("attestations", {}), "spec.attestations")),
        signing=_parse_signing(spec.get("signing"), output),
        identity=spec_identity(obj),
        build_id=build_id(meta.get("uid") or "", int(meta.get("generation") or 1), rebuild),
    )


def parse_registry_login(obj: dict) -> LoginSpec:
    meta = obj.get("metadata") or {}
    spec = _mapping(obj.get("spec"), "spec", required=True)
    server = spec.get("server")
    if not isinstance(server, str) or not server.strip():
        raise InvalidSpec("spec.server", "required: the registry host, e.g. registry.example.com:5000")
    if "@" in server.split("://", 1)[-1].split("/", 1)[0]:
        raise InvalidSpec("spec.server", "must not carry credentials (user:password@); "
                                         "put them in the Secret that spec.secretRef names")
    _match(server, SERVER_PATTERN, "spec.server", "is not a registry host[:port] (port 1-65535)")
    host = normalize_server(server)
    secret_ref = _mapping(spec.get("secretRef"), "spec.secretRef", required=True)
    ca = _mapping(spec.get("caBundle", {}), "spec.caBundle")
    insecure = _boolean(spec.get("insecure", False), "spec.insecure")
    if insecure and ca:
        raise InvalidSpec("spec.caBundle", "caBundle has no effect with insecure=true; set one or the other")
    _schema("RegistryLogin", obj)
    return LoginSpec(
        namespace=meta.get("namespace") or "default",
        name=_name(meta.get("name"), "metadata.name"),
        generation=int(meta.get("generation") or 1),
        server=host,
        secret=_name(secret_ref.get("name"), "spec.secretRef.name"),
        insecure=insecure,
        verify=_boolean(spec.get("verify", True), "spec.verify"),
        ca_config_map=_name(ca["name"], "spec.caBundle.name") if ca else None,
        ca_key=ca.get("key", "ca.crt"),
    )


# Specs that passed the schema check, by kind and content (oldest first). The operator parses the same spec at
# every reconcile of a build and of its logins, and the check is most of a parse.
_PASSED: dict[tuple[str, str], None] = {}
PASSED_KEPT = 4096


def _schema(kind: str, obj: dict) -> None:
    """The CRD's own schema (bounds, enums, patterns, unknown fields): what the API server would refuse is
    refused here too, whatever the checks above let through."""
    spec = obj.get("spec")
    try:
        key = (kind, json.dumps(spec, sort_keys=True))
    except TypeError:  # not JSON (a date from a YAML file): checked, not remembered
        key = None
    if key in _PASSED:
        return
    found = structural_errors(kind, {"spec": spec})
    if found:
        where, _, message = found[0].partition(": ")
        # What the API server says, but not the value it quotes: a URL or reference may carry a credential, and
        # this message reaches status, events and logs.
        if message.startswith("Invalid value: ") and f": {where} in body " in message:
            message = message[message.index(f": {where} in body ") + 2:]
        raise InvalidSpec(where.removeprefix('unknown field "').rstrip('"'), message or found[0])
    if key is not None:
        _PASSED[key] = None
        if len(_PASSED) > PASSED_KEPT:
            del _PASSED[next(iter(_PASSED))]


def parse_duration(value, where: str) -> int:
    match = _DURATION.match(value) if isinstance(value, str) and value else None
    if not match:
        raise InvalidSpec(where, f"{value!r} is not a duration such as 30m or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise InvalidSpec(where, "must be a positive duration such as 30m or 1h30m")
    return total


def _parse_source(source: dict) -> Source:
    kinds = [k for k in ("git", "volume", "configMap", "url") if k in source]
    if len(kinds) != 1:
        raise InvalidSpec("spec.source", "exactly one of source.git, source.volume, source.configMap or source.url must be set")
    (kind,) = kinds
    origin: GitSource | VolumeSource | ConfigMapSource | UrlSource
    if kind == "git":
        git = _mapping(source["git"], "spec.source.git")
        url = git.get("url")
        if isinstance(url, str) and any(re.search(pattern, url) for pattern in CREDENTIALS_IN_URL):
            raise InvalidSpec("spec.source.git.url", "source.git.url must not carry credentials; put the token or key "
                                                     "in the Secret that source.git.secretRef names")
        _match(url, _GIT_URL.pattern, "spec.source.git.url",
               "must be an https://, ssh://, git:// or git@host:path URL without spaces or '#'", echo=False)
        _remote("spec.source.git.url", url)
        revision = git.get("revision")
        if revision is not None:
            _match(revision, _REVISION.pattern, "spec.source.git.revision", "must be a branch, tag or commit name")
        secret = git.get("secretRef")
        origin = GitSource(url, revision, _name(_mapping(secret, "spec.source.git.secretRef")["name"],
                                                "spec.source.git.secretRef.name") if secret else None)
    elif kind == "volume":
        volume = _mapping(source["volume"], "spec.source.volume")
        origin = VolumeSource(_name(volume.get("claimName"), "spec.source.volume.claimName"),
                              _relative(volume.get("path", "."), "spec.source.volume.path"))
    elif kind == "configMap":
        origin = ConfigMapSource(_name(_mapping(source["configMap"], "spec.source.configMap").get("name"),
                                       "spec.source.configMap.name"))
    else:
        url = source["url"]
        if isinstance(url, str) and re.search(CREDENTIALS_IN_URL[0], url):
            raise InvalidSpec("spec.source.url", "source.url must not carry credentials; the URL is written into the "
                                                 "build Job, where whoever may read Jobs sees it")
        origin = UrlSource(_match(url, _TARBALL_URL.pattern, "spec.source.url", "must be an http(s) URL", echo=False))
        _remote("spec.source.url", url)
    context_dir = _relative(source.get("contextDir", "."), "spec.source.contextDir")
    if isinstance(origin, (UrlSource, ConfigMapSource)) and context_dir != ".":
        raise InvalidSpec("spec.source.contextDir", "source.contextDir is only supported with source.git and source.volume")
    return Source(origin, context_dir, _relative(source.get("dockerfile", "Dockerfile"), "spec.source.dockerfile"))


def _parse_output(output: dict) -> Output:
    image = _match(output.get("image"), IMAGE_PATTERN, "spec.output.image",
                   "must be a repository without tag or digest, e.g. registry.example.com/team/app", echo=False)
    tags = tuple(_strings(output.get("tags", ["latest"]), "spec.output.tags"))
    if not tags:
        raise InvalidSpec("spec.output.tags", "must list at least one tag")
    for i, tag in enumerate(tags):
        _match(tag, TAG_PATTERN, f"spec.output.tags[{i}]", "must be a valid tag (letters, digits, _ . -)")
    _unique(tags, "spec.output.tags")
    return Output(image, tags, _boolean(output.get("push", True), "spec.output.push"))


def _parse_cache(cache: dict, output: Output) -> Cache:
    kind = _choice(cache.get("type", "registry"), CACHE_TYPES, "spec.cache.type")
    for key, allowed in (("ref", "registry"), ("mode", "registry"), ("volume", "local")):
        if key in cache and kind != allowed:
            raise InvalidSpec(f"spec.cache.{key}", f"cache.{key} is only used when cache.type is {allowed}")
    if kind == "local" and "volume" not in cache:
        raise InvalidSpec("spec.cache.volume", "cache.volume is required when cache.type is local")
    if kind == "none" and "importRefs" in cache:
        raise InvalidSpec("spec.cache.importRefs", "cache.importRefs cannot be used when cache.type is none")
    imports = tuple(_strings(cache.get("importRefs", []), "spec.cache.importRefs"))
    for i, ref in enumerate(imports):
        _match(ref, TAGGED_REF_PATTERN, f"spec.cache.importRefs[{i}]", "must be an image ref with a tag", echo=False)
    ref = None
    if kind == "registry":
        ref = cache.get("ref", f"{output.image}:build-cache")
        _match(ref, TAGGED_REF_PATTERN, "spec.cache.ref",
               "must be an image ref with a tag, e.g. registry.example.com/app:build-cache", echo=False)
    volume = _name(_mapping(cache["volume"], "spec.cache.volume").get("claimName"), "spec.cache.volume.claimName") \
        if kind == "local" else None
    return Cache(kind, ref, _choice(cache.get("mode", "max"), ("max", "min"), "spec.cache.mode"), imports, volume)


def _parse_secrets(items) -> tuple[BuildSecret, ...]:
    out = []
    for i, item in enumerate(_list(items, "spec.secrets")):
        item = _mapping(item, f"spec.secrets[{i}]")
        ref = _mapping(item.get("secretRef"), f"spec.secrets[{i}].secretRef", required=True)
        key = ref.get("key")
        if not isinstance(key, str) or not key:
            raise InvalidSpec(f"spec.secrets[{i}].secretRef.key", "required")
        secret_id = _match(item.get("id"), _SECRET_ID.pattern, f"spec.secrets[{i}].id", "must be letters, digits, _ . -")
        out.append(BuildSecret(secret_id, _name(ref.get("name"), f"spec.secrets[{i}].secretRef.name"), key))
    _unique([s.id for s in out], "spec.secrets ids")
    return tuple(out)


def _parse_attestations(attestations: dict) -> Attestations:
    provenance = _choice(attestations.get("provenance", "min"), PROVENANCE_MODES, "spec.attestations.provenance")
    if "sbom" not in attestations:
        return Attestations(provenance)
    sbom = _mapping(attestations["sbom"], "spec.attestations.sbom")
    generator = sbom.get("generator")
    if generator is not None:
        _match(generator, IMAGE_REF_PATTERN, "spec.attestations.sbom.generator",
               "must be an image reference, e.g. registry.example.com/tools/sbom-scanner:1", echo=False)
    return Attestations(provenance, True, generator,
                        _boolean(sbom.get("scanStages", False), "spec.attestations.sbom.scanStages"))


def _parse_signing(signing, output: Output) -> Signing:
    if signing is None:
        return Signing()
    signing = _mapping(signing, "spec.signing")
    cosign = _mapping(signing.get("cosign"), "spec.signing.cosign", required=True)
    ref = _mapping(cosign.get("keySecretRef"), "spec.signing.cosign.keySecretRef", required=True)
    if not output.push:
        raise InvalidSpec("spec.signing", "signing needs the image pushed (spec.output.push is false)")
    return Signing(_name(ref.get("name"), "spec.signing.cosign.keySecretRef.name"))


def _parse_builder(builder: dict, warm_default: bool) -> Builder:
    selector = _mapping(builder.get("nodeSelector", {}), "spec.builder.nodeSelector")
    account = builder.get("serviceAccountName")
    return Builder(
        resources=_mapping(builder.get("resources", {}), "spec.builder.resources"),
        node_selector=tuple(sorted((str(k), str(v)) for k, v in selector.items())),
        tolerations=tuple(_mapping(t, f"spec.builder.tolerations[{i}]")
                          for i, t in enumerate(_list(builder.get("tolerations", []), "spec.builder.tolerations"))),
        service_account=_name(account, "spec.builder.serviceAccountName") if account else None,
        user_namespaces=_boolean(builder.get("userNamespaces", False), "spec.builder.userNamespaces"),
        warm=_boolean(builder["warm"], "spec.builder.warm") if builder.get("warm") is not None else warm_default,
    )


def _mapping(value, where: str, required: bool = False) -> dict:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise InvalidSpec(where, "required" if value is None else "must be an object")
    return value


def _list(value, where: str) -> list:
    if not isinstance(value, list):
        raise InvalidSpec(where, "must be a list")
    return value


def _strings(value, where: str) -> list[str]:
    items = _list(value, where)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidSpec(f"{where}[{i}]", "must be a string")
    return items


def _match(value, pattern: str, where: str, explain: str, echo: bool = True) -> str:
    """value, when the pattern matches it. echo=False: a refusal does not quote the value (a URL or reference may
    carry a credential beside what made it fail)."""
    if not isinstance(value, str) or not go_pattern(pattern).search(value):
        if value is None:
            raise InvalidSpec(where, f"required: {explain}")
        raise InvalidSpec(where, f"{value!r} {explain}" if echo else explain)
    return value


def _remote(where: str, url: str) -> None:
    """A URL BuildKit fetches: no credential in its query, no option for a host, no metadata service."""
    field = where.removeprefix("spec.")
    if re.search(CREDENTIALS_IN_QUERY, url):
        raise InvalidSpec(where, f"{field} must not carry a credential in its query; the URL is written into the "
                                 "build Job, where whoever may read Jobs sees it")
    if re.search(OPTION_AS_HOST, url):
        raise InvalidSpec(where, f"{field}: the host must not start with '-'")
    scp = re.match(r"^[^/@:]*@([^/:]+):", url)  # git@host:path
    try:
        host = scp.group(1) if scp else urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    if forbidden_host(host):
        raise InvalidSpec(where, f"{field} points at a link-local or cloud metadata address, which build pods must "
                                 "not reach")


def _name(value, where: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _NAME.fullmatch(value):
        raise InvalidSpec(where, f"{value!r} is not a Kubernetes object name")
    return value


def _relative(value, where: str) -> str:
    if not isinstance(value, str) or not value or value.startswith("/") or ".." in PurePosixPath(value).parts \
            or any(c in value for c in "\n\r\0,"):
        raise InvalidSpec(where, f"{where.removeprefix('spec.')} must be relative and must not contain '..'")
    return str(PurePosixPath(value))


def _choice(value, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise InvalidSpec(where, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _unique(values, where: str) -> None:
    if len(set(values)) != len(list(values)):
        raise InvalidSpec(where, "must be unique")


def _integer(value, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidSpec(where, f"must be a whole number from {low} to {high}")
    return value


def _boolean(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpec(where, "must be true or false")
    return value
