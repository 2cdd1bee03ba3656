"""The only module that talks to registries: the OCI distribution HTTP API.

It follows the /v2/ challenge like the docker CLI: Basic, or Bearer with a token
from the realm (service and scope honoured). Nothing here logs or raises with a
credential or token in it: errors carry a reason and a message for users.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import socket
import ssl
from dataclasses import dataclass, field
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver

from kiln.build.credentials import Credentials
from kiln.build.questions import Attestation, PlatformImage
from kiln.spec import reasons
from kiln.spec.addresses import candidates, forbidden_address
from kiln.spec.references import INDEX_MEDIA_TYPES, MANIFEST_MEDIA_TYPES, OCI_INDEX, api_endpoint
from kiln.spec.settings import Settings

MANIFEST_TYPES = INDEX_MEDIA_TYPES + MANIFEST_MEDIA_TYPES  # what GET manifest accepts
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth trying again later as it is: no answer, a 5xx or 429, or a token service in trouble."""
        return self.reason in (reasons.REGISTRY_UNREACHABLE, reasons.REGISTRY_ERROR)


@dataclass(frozen=True)
class AddressGuard:
    """Where the operator may connect for a registry (a login's server, its token realm, an upload Location):
    never a link-local or cloud metadata address unless allowed, never a range the operator denies."""
    allow_link_local: bool = False
    deny: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> AddressGuard:
        return cls(settings.allow_link_local, tuple(ipaddress.ip_network(c, strict=False)
                                                     for c in settings.registry_deny_cidrs))

    def refusal(self, address: str) -> str | None:
        """Why the operator may not connect to this address; None when it may."""
        if not self.allow_link_local and forbidden_address(address):
            return "is a link-local or cloud metadata address; the operator setting KILN_ALLOW_LINK_LOCAL allows it"
        found = candidates(address)
        denied = next((net for net in self.deny for c in found if c.version == net.version and c in net), None)
        return f"is in {denied}, which the operator setting KILN_REGISTRY_DENY_CIDRS denies" if denied else None


class _GuardedResolver(AbstractResolver):
    """Resolves names, refusing answers the guard refuses (checked at connect time, so DNS rebinding cannot
    slip past), so a login cannot probe them."""

    def __init__(self, guard: AddressGuard) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._guard = guard

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        found = await self._inner.resolve(host, port, family)
        for item in found:
            if refusal := self._guard.refusal(item["host"]):
                raise RegistryError(reasons.ADDRESS_NOT_ALLOWED, f"{host} resolves to {item['host']}, which {refusal}")
        return found

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class Registry:
    """How to reach one registry: its host and its TLS needs."""
    host: str
    insecure: bool = False
    ca_pem: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Verification:
    scheme: str  # Basic, Bearer or None (the registry asks for no credentials)


class RegistryClient:
    """One session with one registry, optionally with credentials."""

    def __init__(self, registry: Registry, credentials: Credentials | None, *, timeout: float = 10.0,
                 guard: AddressGuard = AddressGuard()):
        self.registry = registry
        self.host = api_endpoint(registry.host)
        self._credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._guard = guard
        self._session: aiohttp.ClientSession | None = None
        self._scheme: str | None = None  # https, or http for an insecure registry that has no TLS
        # scope -> (scheme, token): how requests for that scope are authorized once challenged
        self._authorization: dict[str, tuple[str, str | None]] = {}

    async def __aenter__(self) -> RegistryClient:
        self.open()
        return self

    def open(self) -> None:
        """Start the session (connections and tokens are then reused until close)."""
        if self._session is not None:
            return
        if self.registry.insecure:
            tls: ssl.SSLContext | bool = False
        else:
            tls = ssl.create_default_context(cadata=self.registry.ca_pem) if self.registry.ca_pem else True
        connector = aiohttp.TCPConnector(ssl=tls, resolver=_GuardedResolver(self._guard))
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session:
            await self._session.close()
            self._session = None

    def _check_host(self, url: str) -> None:
        host = aiohttp.client.URL(url).host or ""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return  # names go through the guarded resolver
        if refusal := self._guard.refusal(str(literal)):
            raise RegistryError(reasons.ADDRESS_NOT_ALLOWED, f"{host} {refusal}")

    async def _request(self, method: str, url: str, **kwargs) -> tuple[int, dict, bytes]:
        self._check_host(url)
        assert self._session is not None, "use RegistryClient as an async context manager"
        try:
            async with self._session.request(method, url, allow_redirects=False, **kwargs) as response:
                return response.status, dict(response.headers), await response.read()
        except RegistryError:
            raise
        except TimeoutError:
            raise RegistryError(reasons.REGISTRY_UNREACHABLE,
                                f"{self.registry.host} did not answer within {self._timeout.total:g}s") from None
        except aiohttp.ClientSSLError as exc:
            raise RegistryError(reasons.REGISTRY_UNREACHABLE,
                                f"TLS with {self.registry.host} failed ({type(exc).__name__}); set caBundle, "
                                "or insecure for a registry without a trusted certificate") from None
        except aiohttp.ClientError as exc:
            raise RegistryError(reasons.REGISTRY_UNREACHABLE,
                                f"cannot connect to {self.registry.host} ({type(exc).__name__})") from None
        except OSError as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, RegistryError) else None
            if cause:
                raise cause from None
            raise RegistryError(reasons.REGISTRY_UNREACHABLE, f"cannot connect to {self.registry.host}") from None

    async def _base(self) -> str:
        """https://host, or http://host for an insecure registry that does not speak TLS."""
        if self._scheme is None:
            self._scheme = "https"
            if self.registry.insecure:
                try:
                    await self._request("GET", f"https://{self.host}/v2/")
                except RegistryError as exc:
                    if exc.reason != reasons.REGISTRY_UNREACHABLE:
                        raise
                    self._scheme = "http"
        return f"{self._scheme}://{self.host}"

    async def verify(self) -> Verification:
        """The /v2/ handshake with these credentials."""
        base = await self._base()
        status, _, _ = await self._call("GET", f"{base}/v2/", scope="")
        if status == 200:
            return Verification(self._authorization.get("", ("None", None))[0])
        if status in (401, 403):
            raise RegistryError(reasons.AUTHENTICATION_FAILED, f"{self.registry.host} refused the credentials")
        raise self._unexpected(status, "/v2/")

    async def check_push(self, repository: str) -> None:
        """Start and cancel a blob upload: the one check every registry answers the same way."""
        base = await self._base()
        scope = f"repository:{repository}:pull,push"
        status, headers, _ = await self._call("POST", f"{base}/v2/{repository}/blobs/uploads/", scope=scope)
        if status == 202:
            location = _header(headers, "location")
            url = urljoin(f"{base}/", location) if location else None
            # An upload elsewhere is left to expire: the login's credentials go to the registry's own origin only.
            if url and _origin(url) == _origin(base):
                await self._call("DELETE", url, scope=scope)
            return
        if status in (401, 403):
            raise RegistryError(reasons.PUSH_DENIED, f"{self.registry.host} denies push to {repository}")
        if status == 404:
            raise RegistryError(reasons.PUSH_DENIED,
                                f"{self.registry.host} has no repository {repository} and does not create it on push")
        raise self._unexpected(status, f"/v2/{repository}/blobs/uploads/")

    async def get_manifest(self, repository: str, reference: str) -> tuple[str, bytes, str]:
        """(media type, body, digest) of a manifest or index."""
        base = await self._base()
        path = f"/v2/{repository}/manifests/{reference}"
        status, headers, body = await self._call("GET", f"{base}{path}", scope=f"repository:{repository}:pull",
                                                 headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if status == 404:
            raise RegistryError(reasons.IMAGE_NOT_FOUND, f"{self.registry.host} has no {repository}@{reference}")
        if status != 200:
            raise self._unexpected(status, path)
        digest = _header(headers, "docker-content-digest") or "sha256:" + hashlib.sha256(body).hexdigest()
        return _header(headers, "content-type") or "", body, digest

    async def signatures(self, repository: str, digest: str) -> list[str]:
        """The digests of the sigstore bundles that refer to digest: from the OCI 1.1 referrers API, or where
        a registry without it keeps them (the referrers tag, sha256-<hex>), as cosign pushes them."""
        base = await self._base()
        path = f"/v2/{repository}/referrers/{digest}"
        status, _, body = await self._call("GET", f"{base}{path}", scope=f"repository:{repository}:pull",
                                           headers={"Accept": OCI_INDEX})
        if status != 200:
            if status not in (400, 404, 405):
                raise self._unexpected(status, path)
            try:
                _, body, _ = await self.get_manifest(repository, digest.replace(":", "-", 1))
            except RegistryError as exc:
                if exc.reason == reasons.IMAGE_NOT_FOUND:
                    return []
                raise
        return [entry["digest"] for entry in json.loads(body).get("manifests", [])
                if entry.get("artifactType", "").startswith(SIGSTORE_BUNDLE)]

    async def put_manifest(self, repository: str, reference: str, media_type: str, body: bytes) -> None:
        """Push a manifest or index under a tag or digest (its digest is the sha256 of body)."""
        base = await self._base()
        path = f"/v2/{repository}/manifests/{reference}"
        status, _, _ = await self._call("PUT", f"{base}{path}", scope=f"repository:{repository}:pull,push",
                                        headers={"Content-Type": media_type}, data=body)
        if status in (401, 403):
            raise RegistryError(reasons.PUSH_DENIED, f"{self.registry.host} denies push to {repository}")
        if status != 201:
            raise self._unexpected(status, path)

    async def _call(self, method: str, url: str, scope: str, headers: dict | None = None, **kwargs):
        """A request that answers the registry's challenge, then reuses that authorization for the scope; a token
        that expired meanwhile is answered with a 401 again, and a new one is fetched once."""
        response = await self._request(method, url, headers=self._authorized(scope, headers), **kwargs)
        status, response_headers, _ = response
        challenge = _header(response_headers, "www-authenticate")
        # A token that does not grant enough asks again in vain; one that expired gets a new one.
        if status == 401 and challenge and 'error="insufficient_scope"' not in challenge:
            self._authorization.pop(scope, None)
            await self._authorize(self._challenge(response_headers), scope)
            response = await self._request(method, url, headers=self._authorized(scope, headers), **kwargs)
        return response

    def _authorized(self, scope: str, headers: dict | None) -> dict:
        """headers plus the Authorization this scope was granted, if any yet."""
        scheme, token = self._authorization.get(scope, ("None", None))
        headers = dict(headers or {})
        if scheme == "Bearer":
            headers["Authorization"] = f"Bearer {token}"
        elif scheme == "Basic" and self._credentials:
            headers["Authorization"] = self._basic_authorization()
        return headers

    def _basic_authorization(self) -> str:
        assert self._credentials is not None
        pair = f"{self._credentials.username}:{self._credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _challenge(self, headers: dict) -> tuple[str, dict[str, str]]:
        scheme, _, params = (_header(headers, "www-authenticate") or "").partition(" ")
        if scheme.lower() not in ("basic", "bearer"):
            raise RegistryError(reasons.REGISTRY_ERROR, f"{self.registry.host} asks for unknown auth scheme {scheme!r}")
        return scheme.capitalize(), dict(_CHALLENGE_PARAM.findall(params))

    async def _authorize(self, challenge: tuple[str, dict[str, str]], scope: str) -> None:
        scheme, params = challenge
        if scheme == "Basic":
            if not self._credentials:
                raise RegistryError(reasons.AUTHENTICATION_FAILED, f"{self.registry.host} needs credentials")
            self._authorization[scope] = ("Basic", None)
            return
        realm = params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise RegistryError(reasons.REGISTRY_ERROR, f"{self.registry.host} sent a Bearer challenge without a realm")
        # The realm may be another host (Docker Hub's is): it gets the credentials, but never in clear text when
        # the registry itself is reached over TLS, unless the login says the registry is insecure.
        if self._credentials and realm.startswith("http://") and self._scheme == "https" and not self.registry.insecure:
            raise RegistryError(reasons.INSECURE_TOKEN_REALM,
                                f"{self.registry.host} names a plain-http token service ({_origin(realm)}); kiln sends "
                                "the login's credentials there only when the login is insecure")
        query = {"service": params["service"]} if "service" in params else {}
        if scope:
            query["scope"] = scope
        headers = {"Authorization": self._basic_authorization()} if self._credentials else {}
        status, _, body = await self._request("GET", realm, params=query, headers=headers)
        if status in (401, 403):
            raise RegistryError(reasons.AUTHENTICATION_FAILED,
                                f"the token service of {self.registry.host} refused the credentials")
        if status != 200:
            raise RegistryError(reasons.REGISTRY_ERROR, f"the token service of {self.registry.host} answered HTTP {status}")
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise RegistryError(reasons.REGISTRY_ERROR, f"the token service of {self.registry.host} sent no token")
        self._authorization[scope] = ("Bearer", token)

    def _unexpected(self, status: int, path: str) -> RegistryError:
        """5xx and 429 may pass; any other answer kiln did not expect will not change by asking again."""
        reason = reasons.REGISTRY_ERROR if status >= 500 or status == 429 else reasons.REGISTRY_REJECTED
        return RegistryError(reason, f"{self.registry.host} answered HTTP {status} to {path}")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = aiohttp.client.URL(url)
    return parts.scheme, (parts.host or "").lower(), parts.port


def _header(headers: dict, name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)



DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def platform_of(platform: str) -> dict[str, str]:
    os_name, arch, *variant = platform.split("/")
    return {"os": os_name, "architecture": arch, **({"variant": variant[0]} if variant else {})}


def image_index(manifests: list[dict], attestations: list[dict] = ()) -> dict:
    """An index of per-platform manifests [{mediaType, digest, size, platform: os/arch[/variant]}], then the
    attestation entries as BuildKit wrote them: a Docker manifest list when every child is a Docker manifest
    (clients that know one kind read it), else an OCI index."""
    docker = not attestations and all(m["mediaType"] == DOCKER_MANIFEST for m in manifests)
    return {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST if docker else OCI_INDEX,
            "manifests": [*({**m, "platform": platform_of(m["platform"])} for m in manifests), *attestations]}


SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle"  # the artifactType of cosign's signatures (any version)
# How BuildKit (and docker buildx) ties an attestation manifest in an index to the image it attests.
REFERENCE_TYPE, REFERENCE_DIGEST = "vnd.docker.reference.type", "vnd.docker.reference.digest"
PREDICATE_TYPE = "in-toto.io/predicate-type"


def platform_digests(media_type: str, body: bytes) -> list[tuple[str, str]]:
    """(os/arch[/variant], digest) of each image in an index; attestation entries are skipped."""
    if media_type not in INDEX_MEDIA_TYPES:
        return []
    out = []
    for entry in json.loads(body).get("manifests", []):
        platform = entry.get("platform") or {}
        if platform.get("os") in (None, "unknown"):
            continue  # BuildKit's attestation manifests
        name = "/".join(filter(None, [platform.get("os"), platform.get("architecture"), platform.get("variant")]))
        out.append((name, entry["digest"]))
    return out


def attestation_entries(media_type: str, body: bytes) -> dict[str, dict]:
    """The attestation manifests of an index, as its entries, by the digest of the image each attests."""
    if media_type not in INDEX_MEDIA_TYPES:
        return {}
    return {entry["annotations"][REFERENCE_DIGEST]: entry for entry in json.loads(body).get("manifests", [])
            if (entry.get("annotations") or {}).get(REFERENCE_TYPE) == "attestation-manifest"
            and entry["annotations"].get(REFERENCE_DIGEST)}


async def _attestation(client: RegistryClient, repository: str, entry: dict | None) -> Attestation | None:
    """The attestation an index entry names, with the predicate types its layers declare (the layers are not read)."""
    if entry is None:
        return None
    _, body, _ = await client.get_manifest(repository, entry["digest"])
    layers = json.loads(body).get("layers", [])
    types = tuple(dict.fromkeys(t for layer in layers if (t := (layer.get("annotations") or {}).get(PREDICATE_TYPE))))
    return Attestation(entry["digest"], types)


async def image_platforms(client: RegistryClient, repository: str, digest: str,
                          platforms: tuple[str, ...]) -> list[PlatformImage]:
    """Each platform's image in what one pod pushed under digest, with its attestation: an index is looked into."""
    media_type, body, _ = await client.get_manifest(repository, digest)
    found, attestations = platform_digests(media_type, body), attestation_entries(media_type, body)
    if not found:
        return [PlatformImage(platforms[0], digest)] if len(platforms) == 1 else []
    return [PlatformImage(p, d, await _attestation(client, repository, attestations.get(d))) for p, d in found]


async def assemble_index(client: RegistryClient, repository: str, children: list[tuple[str, str]],
                         tags: tuple[str, ...]) -> tuple[str, list[PlatformImage]]:
    """One index of per-platform images pushed by digest, tagged with every tag: (its digest, the images).

    Every child is read back first: one that is missing fails the assembly and nothing is tagged. A pod that
    pushed an index contributes the manifest of its platform from inside it, and the attestation manifest
    BuildKit attached to that image, so the tag carries what an emulated build's would.
    """
    manifests, attached, images = [], [], []
    for platform, digest in children:
        media_type, body, _ = await client.get_manifest(repository, digest)
        entry = None
        if media_type in INDEX_MEDIA_TYPES:
            inner = dict(platform_digests(media_type, body))
            if platform not in inner:
                raise RegistryError(reasons.IMAGE_NOT_FOUND, f"{repository}@{digest} has no {platform} image")
            entry = attestation_entries(media_type, body).get(inner[platform])
            digest = inner[platform]
            media_type, body, _ = await client.get_manifest(repository, digest)
        manifests.append({"mediaType": media_type, "digest": digest, "size": len(body), "platform": platform})
        attestation = await _attestation(client, repository, entry)
        if entry is not None:
            attached.append(entry)
        images.append(PlatformImage(platform, digest, attestation))
    index = image_index(manifests, attached)
    body = json.dumps(index, separators=(",", ":")).encode()
    for tag in tags:
        await client.put_manifest(repository, tag, index["mediaType"], body)
    return "sha256:" + hashlib.sha256(body).hexdigest(), images
