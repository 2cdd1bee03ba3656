"""The Kubernetes API client: the only module that talks to the Kubernetes API.

The kubernetes library loads the configuration (kubeconfig or in-cluster, with
token refresh); requests are plain async REST on aiohttp, so objects stay the
plain dicts the render layer made. Creation is idempotent: children have
deterministic names, so 409 means "already there", never a second build.
"""
from __future__ import annotations

import json
import os
import ssl
import time

import aiohttp
import kubernetes

from kiln import GROUP, VERSION, metrics
from kiln.build.logs import BoundedLog, LogBuffer

# In-cluster tokens are re-read by the library every minute; kubeconfig tokens when they expire.
TOKEN_RECHECK = 10.0
# Connections kept to the API server: HTTP/1.1 carries one request at a time on each, so a burst of reconciles
# (KILN_MAX_CONCURRENT_RECONCILES) opens as many.
CONNECTIONS = 100
# How long an idle one stays open. A TLS handshake costs the operator more CPU than the requests it carries, and a
# burst of builds a minute after the last would otherwise open every connection again (aiohttp keeps them 15 s).
# Below the 90 s after which the API server closes them itself (k8s.io/apiserver, secure_serving.go).
IDLE_CONNECTION_SECONDS = 60.0
# The API server's answer without an object's body (PartialObjectMetadata), where it can give one.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"


class KubeError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def load_config(context: str | None = None) -> None:
    """In-cluster credentials when running in a pod, else the current kube context (or the one named)."""
    if context is None:
        try:
            kubernetes.config.load_incluster_config()
            return
        except kubernetes.config.ConfigException:
            pass
    # The library reads KUBECONFIG when imported; read it now, as kubectl does.
    kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), context=context)


def context_namespace(context: str | None = None) -> str:
    """The namespace kubectl would use: the kube context's, or the pod's own, else default."""
    try:
        contexts, current = kubernetes.config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG"))
        chosen = next((c for c in contexts if c["name"] == context), current) if context else current
        return (chosen.get("context") or {}).get("namespace") or "default"
    except (kubernetes.config.ConfigException, OSError):
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as found:
                return found.read().strip() or "default"
        except OSError:
            return "default"


def bearer_header(config: kubernetes.client.Configuration) -> str | None:
    # kubernetes >= 36 keeps the token under BearerToken, older releases under authorization.
    return config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")


def connection() -> dict:
    """How to reach the API server, for kopf's own login (the same config this module uses)."""
    load_config()
    config = kubernetes.client.Configuration.get_default_copy()
    header = (bearer_header(config) or "").split(" ", 1)
    scheme, token = (None, header[0] or None) if len(header) == 1 else (header[0], header[1])
    return {"server": config.host, "ca_path": config.ssl_ca_cert, "insecure": not config.verify_ssl,
            "scheme": scheme, "token": token, "certificate_path": config.cert_file,
            "private_key_path": config.key_file}


def cluster_problem(timeout: float = 5.0, context: str | None = None) -> str | None:
    """Why the cluster cannot be used, or None when its API server answers."""
    try:
        load_config(context)
    except (kubernetes.config.ConfigException, OSError) as exc:
        return f"no kube context ({exc})"
    host = kubernetes.client.Configuration.get_default_copy().host
    try:
        kubernetes.client.VersionApi().get_code(_request_timeout=timeout)
    except Exception as exc:  # any transport or API failure means "not usable"
        return f"the API server at {host} did not answer ({type(exc).__name__})"
    return None


def serving_problem(namespaces: tuple[str, ...] = (), timeout: float = 10.0) -> str | None:
    """Why kiln's kinds cannot be listed yet (the CRDs not installed or not established, the API server still
    starting), or None when they can. Any other refusal is raised: kopf would meet it too."""
    api = kubernetes.client.CustomObjectsApi()
    for plural in ("imagebuilds", "registrylogins"):
        try:
            if namespaces:
                api.list_namespaced_custom_object(GROUP, VERSION, namespaces[0], plural, limit=1, _request_timeout=timeout)
            else:
                api.list_cluster_custom_object(GROUP, VERSION, plural, limit=1, _request_timeout=timeout)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return f"{plural}.{GROUP} is not served (HTTP 404): its CRD is not installed or not yet established"
            if exc.status in (429, 500, 503):
                return f"the API server is still starting (HTTP {exc.status}: {(exc.reason or '').strip()})"
            raise
        except Exception as exc:  # transport failures: the API server is away for now
            return f"the API server does not answer ({type(exc).__name__})"
    return None


def path(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
         subresource: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base] + ([f"namespaces/{namespace}"] if namespace else []) + [plural]
    parts += [name] if name else []
    parts += [subresource] if subresource else []
    return "/".join(parts)


def labels_match(obj: dict, selector: dict[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


class Kube:
    """A small async REST client for the API server the operator runs against."""

    def __init__(self, configuration: kubernetes.client.Configuration | None = None):
        self._config = configuration or kubernetes.client.Configuration.get_default_copy()
        self._server = self._config.host.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._authorization: tuple[float, dict[str, str]] = (-TOKEN_RECHECK, {})  # (when looked up, header)

    def _ssl(self) -> ssl.SSLContext | bool:
        config = self._config
        if not config.host.startswith("https"):
            return False
        if not config.verify_ssl:
            return False
        context = ssl.create_default_context(cafile=config.ssl_ca_cert) if config.ssl_ca_cert else ssl.create_default_context()
        if config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file)
        return context

    def _headers(self) -> dict[str, str]:
        """The Authorization header, looked up again every TOKEN_RECHECK seconds or after a 401: the library's
        lookup refreshes an expired or rotated token, and costs half a millisecond, far more than the request."""
        looked, header = self._authorization
        if time.monotonic() - looked >= TOKEN_RECHECK:
            token = bearer_header(self._config)
            header = {"Authorization": token} if token else {}
            self._authorization = (time.monotonic(), header)
        return header

    async def close(self) -> None:
        if self._session:
            await self._session.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=CONNECTIONS, keepalive_timeout=IDLE_CONNECTION_SECONDS)
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def request(self, method: str, url: str, *, body=None, params: dict | None = None,
                      content_type: str = "application/json", text: bool = False, accept: str = "application/json"):
        metrics.API_REQUESTS.labels(method).inc()
        session = self._open()
        headers = {**self._headers(), "Accept": accept}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with session.request(method, self._server + url, headers=headers,
                                         data=data, params=params) as response:
            payload = await response.text()
            if response.status == 401:
                self._authorization = (-TOKEN_RECHECK, {})
            if response.status >= 400:
                try:
                    message = json.loads(payload).get("message", payload)
                except ValueError:
                    message = payload
                raise KubeError(response.status, str(message)[:500])
            return payload if text else json.loads(payload or "{}")

    async def get(self, url: str, metadata_only: bool = False) -> dict | None:
        """The object, or None when there is none; metadata_only: its metadata alone (a Secret's data stays put)."""
        try:
            return await self.request("GET", url, accept=METADATA_ONLY if metadata_only else "application/json")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, url: str, labels: dict[str, str] | None = None) -> list[dict]:
        selector = ",".join(f"{k}={v}" for k, v in (labels or {}).items())
        answer = await self.request("GET", url, params={"labelSelector": selector} if selector else None)
        return [item for item in answer.get("items", []) if labels_match(item, labels or {})]

    async def create(self, url: str, obj: dict) -> bool:
        """True when created, False when it was already there (409: names are deterministic, so it is ours).

        One that is being deleted also answers 409; the watch then shows it gone, and the next reconcile makes it."""
        try:
            await self.request("POST", url, body=obj)
            return True
        except KubeError as exc:
            if exc.status != 409:
                raise
        return False

    async def patch(self, url: str, patch: dict) -> dict:
        return await self.request("PATCH", url, body=patch, content_type="application/merge-patch+json")

    async def patch_status(self, url: str, patch: dict) -> dict | None:
        """Merge-patch the status subresource: the object as written, or None if it is gone (deleted while we looked)."""
        try:
            return await self.patch(f"{url}/status", {"status": patch})
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, url: str) -> bool:
        """Delete with background propagation (a Job takes its pods along); False if it was gone already."""
        try:
            await self.request("DELETE", url, body={"propagationPolicy": "Background"})
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise

    async def post_event(self, obj: dict, kind: str, reason: str, message: str, when: str) -> None:
        """A core/v1 Event about obj (what `kubectl describe` and `kubectl get events` show), of the moment `when`."""
        meta = obj["metadata"]
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid", "")},
            "type": kind, "reason": reason, "message": message[:1024], "count": 1,
            "firstTimestamp": when, "lastTimestamp": when, "source": {"component": "kiln"},
        }
        await self.request("POST", path("v1", "events", meta["namespace"]), body=event)

    async def events_of(self, namespace: str, kind: str, name: str) -> list[dict]:
        """The events about one object, oldest first."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        answer = await self.request("GET", path("v1", "events", namespace), params={"fieldSelector": selector})
        found = [e for e in answer.get("items", [])  # filtered here too: not every server honours field selectors
                 if (e.get("involvedObject") or {}).get("kind") == kind and (e.get("involvedObject") or {}).get("name") == name]
        return sorted(found, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    async def bounded_log(self, namespace: str, pod: str, container: str) -> BoundedLog | None:
        """A pod's whole log read as it streams, keeping only its head and its tail: memory stays bounded however
        much the build printed. None when the pod or its log is gone."""
        metrics.API_REQUESTS.labels("GET").inc()
        url = self._server + path("v1", "pods", namespace, pod, "log")
        log = LogBuffer()
        timeout = aiohttp.ClientTimeout(total=300, sock_read=60)  # a long log takes its time to stream
        async with self._open().get(url, headers=self._headers(), params={"container": container},
                                    timeout=timeout) as response:
            if response.status >= 400:
                return None
            async for chunk in response.content.iter_chunked(64 * 1024):
                log.feed(chunk)
        return log.bounded()

    async def follow_log(self, namespace: str, pod: str, container: str):
        """A pod's log line by line as it is written, until the container ends (kubectl logs -f)."""
        metrics.API_REQUESTS.labels("GET").inc()
        url = self._server + path("v1", "pods", namespace, pod, "log")
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self._open().get(url, headers=self._headers(), params={"container": container, "follow": "true"},
                                    timeout=timeout) as response:
            if response.status >= 400:
                return
            async for line in response.content:
                yield line.decode(errors="replace").rstrip("\n")
