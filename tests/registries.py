"""Real registries for tests: Debian's docker-registry (CNCF distribution) on 127.0.0.1,
or on a test host in a network namespace (see netns.py) where pods must reach them.

`start_htpasswd_registry` gives Basic auth; `start_token_registry` gives the Bearer
flow every public registry uses, with a small token issuer that signs JWTs with a
test key and grants each user only the actions it is allowed.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from kiln.clients.registry import MANIFEST_TYPES

from netns import Namespace, listening_socket

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
SERVICE = "kiln-test-registry"
ISSUER = "kiln-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{process.args[0]} did not listen on {host}:{port} within {timeout}s")


@dataclass
class RunningRegistry:
    host: str  # ADDRESS:PORT
    users: dict[str, str]  # user -> password
    process: subprocess.Popen = field(repr=False)
    issuer: TokenIssuer | None = field(default=None, repr=False)
    ca_pem: str | None = field(default=None, repr=False)  # for a TLS registry: the CA that signed its certificate
    storage: Path | None = field(default=None, repr=False)  # where it keeps repositories and uploads

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ca_pem else 'http'}://{self.host}"

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cadata=self.ca_pem) if self.ca_pem else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        if self.issuer:
            self.issuer.shutdown()

    def rotate(self, user: str, password: str) -> None:
        """A new password for `user`, the old one revoked: the htpasswd file rewritten, the registry restarted
        (it reads the file at its start)."""
        htpasswd = Path(self.process.args[-1]).with_name("htpasswd")
        self.users[user] = password
        htpasswd.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                                    for u, p in self.users.items()))
        self.process.kill()
        self.process.wait(timeout=10)
        self.restart()

    def restart(self) -> None:
        """The registry process again, with its storage, after it was killed (an outage): the token issuer, if
        any, was never stopped."""
        host, port = self.host.rsplit(":", 1)
        log = Path(self.process.args[-1]).with_name("registry.log")  # beside the config.yml it was started with
        with log.open("ab") as out:
            self.process = subprocess.Popen(self.process.args, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(int(port), self.process, log, host=host)


def _start(extra: dict, workdir: Path, host: str, port: int | None,
           namespace: Namespace | None) -> tuple[str, subprocess.Popen]:
    """Run docker-registry on host:port (a free loopback port by default) with `extra` config (auth, http.tls)."""
    port = port or free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True}},
        **{k: v for k, v in extra.items() if k != "http"},
        "http": {"addr": f"{host}:{port}", "secret": "kiln-test-http-secret", **extra.get("http", {})},
    }
    path = workdir / "config.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    # A file, not a pipe: nobody reads a pipe while tests run, and a full one would hang the registry.
    log = (workdir / "registry.log").open("wb")
    argv = [REGISTRY_BINARY, "serve", str(path)]
    process = subprocess.Popen(namespace.command(argv) if namespace else argv, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, process, workdir / "registry.log", host=host)
    return f"{host}:{port}", process


def start_htpasswd_registry(workdir: Path, users: dict[str, str], tls: bool = False, host: str = "127.0.0.1",
                            port: int | None = None, namespace: Namespace | None = None) -> RunningRegistry:
    """Basic auth; with tls, HTTPS with a certificate from a private CA (RunningRegistry.ca_pem)."""
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                                for u, p in users.items()))
    config: dict = {"auth": {"htpasswd": {"realm": "kiln-test", "path": str(htpasswd)}}}
    ca_pem = _tls(config, workdir, host) if tls else None
    address, process = _start(config, workdir, host, port, namespace)
    return RunningRegistry(address, users, process, ca_pem=ca_pem, storage=workdir / "data")


def _tls(config: dict, workdir: Path, host: str) -> str:
    """Serve HTTPS with a certificate from a new private CA; returns the CA's PEM."""
    ca_pem, cert, key = _server_certificate(workdir, host)
    config["http"] = {"tls": {"certificate": str(cert), "key": str(key)}}
    return ca_pem


def _server_certificate(workdir: Path, host: str) -> tuple[str, Path, Path]:
    """A private CA and a certificate it signed for the IP address host: (CA PEM, certificate file, key file)."""
    import ipaddress

    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = workdir / "server.crt", workdir / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM).decode(), cert_file, key_file


class TokenIssuer(http.server.ThreadingHTTPServer):
    """GET /token?service=...&scope=repository:NAME:ACTIONS with Basic auth -> a signed JWT."""

    def __init__(self, key: rsa.RSAPrivateKey, certificate: x509.Certificate, users: dict[str, tuple[str, set[str]]],
                 sock: socket.socket):
        super().__init__(sock.getsockname(), _TokenHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock  # already listening, perhaps in another network namespace
        self.key, self.certificate, self.users = key, certificate, users
        self.requests: list[dict] = []
        self.lifetime = datetime.timedelta(minutes=5)  # how long tokens it issues are valid

    def token_for(self, user: str, scopes: list[str]) -> str:
        allowed = self.users[user][1] if user else set()
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            granted = [a for a in actions.split(",") if a in allowed]
            access.append({"type": kind, "name": name, "actions": granted})
        now = datetime.datetime.now(datetime.UTC)
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "iat": now, "nbf": now - datetime.timedelta(seconds=5),
                  "exp": now + self.lifetime, "jti": base64.b32encode(now.isoformat().encode()).decode(),
                  "access": access}
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"x5c": [base64.b64encode(der).decode()]})


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    """Both ways clients ask (distribution's token spec): GET with Basic auth, as the docker CLI does,
    and the OAuth2 POST (grant_type=password), as containerd and so BuildKit do."""
    server: TokenIssuer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        user, password = "", None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        self._answer(user, password, query, "token")

    def do_POST(self) -> None:  # noqa: N802
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
        if form.get("grant_type") != ["password"]:
            self._send(400, {"error": "unsupported_grant_type"})
            return
        self._answer(form.get("username", [""])[0], form.get("password", [""])[0], form, "access_token")

    def _answer(self, user: str, password: str | None, params: dict, key: str) -> None:
        if user and self.server.users.get(user, ("",))[0] != password:
            self._send(401, {"error": "invalid credentials"})
            return
        scopes = [scope for value in params.get("scope", []) for scope in value.split()]
        self.server.requests.append({"user": user, "service": params.get("service"), "scope": scopes})
        self._send(200, {key: self.server.token_for(user, scopes), "expires_in": 300})

    def _send(self, status: int, answer: dict) -> None:
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _signing_key(workdir: Path) -> tuple[rsa.RSAPrivateKey, x509.Certificate, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    bundle = workdir / "token-ca.pem"
    bundle.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key, certificate, bundle


def start_token_registry(workdir: Path, users: dict[str, tuple[str, set[str]]], tls: bool = False,
                         host: str = "127.0.0.1", port: int | None = None, issuer_port: int = 0,
                         namespace: Namespace | None = None, realm_tls: bool | None = None,
                         realm: str | None = None) -> RunningRegistry:
    """users: name -> (password, allowed actions such as {"pull", "push"}); the token issuer listens beside it,
    over TLS when the registry is (realm_tls=False: plain http, a misconfiguration kiln refuses to send to).
    realm: what the registry's challenge names instead of its issuer."""
    workdir.mkdir(parents=True, exist_ok=True)
    key, certificate, bundle = _signing_key(workdir)
    config: dict = {}
    ca_pem = _tls(config, workdir, host) if tls else None
    sock = listening_socket(host, issuer_port, namespace)
    if tls if realm_tls is None else realm_tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(config["http"]["tls"]["certificate"], config["http"]["tls"]["key"])
        sock = context.wrap_socket(sock, server_side=True)
    issuer = TokenIssuer(key, certificate, users, sock)
    threading.Thread(target=issuer.serve_forever, daemon=True).start()
    scheme = "https" if isinstance(sock, ssl.SSLSocket) else "http"
    realm = realm or f"{scheme}://{host}:{issuer.server_address[1]}/token"
    config["auth"] = {"token": {"realm": realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(bundle)}}
    address, process = _start(config, workdir, host, port, namespace)
    return RunningRegistry(address, {u: p for u, (p, _) in users.items()}, process, issuer, ca_pem)


def silent_server() -> tuple[socket.socket, str]:
    """A port that accepts connections and never answers: a registry that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener, f"127.0.0.1:{listener.getsockname()[1]}"


class Client:
    """A plain urllib client for one test registry as one user: Basic, or Bearer after the challenge."""

    def __init__(self, registry: RunningRegistry, user: str):
        self.registry, self.user = registry, user
        self._basic = "Basic " + base64.b64encode(f"{user}:{registry.users[user]}".encode()).decode()
        self._tokens: dict[str, str] = {}  # scope -> bearer token

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        """(status, headers, body) of a request to a path under the registry (or a full URL)."""
        url = path if path.startswith("http") else f"{self.registry.base_url}{path}"
        status, answer_headers, data = self._send(method, url, body, headers, self._authorization(url))
        challenge = answer_headers.get("WWW-Authenticate", "")
        if status == 401 and challenge.startswith("Bearer "):
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            query = urllib.parse.urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
            _, _, token = self._send("GET", f"{params['realm']}?{query}", b"", None, self._basic)
            self._tokens.pop(params.get("scope", ""), None)
            self._tokens[params.get("scope", "")] = json.loads(token)["token"]
            status, answer_headers, data = self._send(method, url, body, headers, self._authorization(url))
        return status, answer_headers, data

    def _authorization(self, url: str) -> str:
        repository = re.search(r"/v2/(.+?)/(manifests|blobs)/", url)
        for scope, token in reversed(self._tokens.items()):  # the newest: a pull token does not push
            if repository and scope.startswith(f"repository:{repository.group(1)}:"):
                return f"Bearer {token}"
        return self._basic

    def _send(self, method: str, url: str, body: bytes, headers: dict | None, authorization: str):
        request = urllib.request.Request(url, data=body if method in ("POST", "PUT", "PATCH") else None, method=method)
        request.add_header("Authorization", authorization)
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.registry.ssl_context()) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def push_blob(self, repository: str, blob: bytes) -> str:
        status, headers, _ = self.request("POST", f"/v2/{repository}/blobs/uploads/")
        assert status == 202, status
        location = headers["Location"]
        separator = "&" if "?" in location else "?"
        status, _, _ = self.request("PUT", f"{location}{separator}digest={digest_of(blob)}", blob,
                                    {"Content-Type": "application/octet-stream"})
        assert status == 201, status
        return digest_of(blob)

    def push_manifest(self, repository: str, reference: str, media_type: str, body: bytes) -> str:
        status, _, answer = self.request("PUT", f"/v2/{repository}/manifests/{reference}", body, {"Content-Type": media_type})
        assert status == 201, (status, answer[:300])
        return digest_of(body)

    def manifest(self, repository: str, reference: str) -> tuple[str, dict, str]:
        """(content type, manifest, digest) of a tag or digest."""
        # Without the list types in Accept, distribution serves a single platform's manifest.
        status, headers, body = self.request("GET", f"/v2/{repository}/manifests/{reference}",
                                             headers={"Accept": ", ".join(MANIFEST_TYPES)})
        assert status == 200, (status, body[:300])
        return headers["Content-Type"], json.loads(body), headers["Docker-Content-Digest"]

    def blob(self, repository: str, digest: str) -> bytes:
        status, _, body = self.request("GET", f"/v2/{repository}/blobs/{digest}")
        assert status == 200, status
        return body


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


DOCKER_TYPES = {"manifest": "application/vnd.docker.distribution.manifest.v2+json",
                "config": "application/vnd.docker.container.image.v1+json",
                "layer": "application/vnd.docker.image.rootfs.diff.tar"}
OCI_TYPES = {"manifest": "application/vnd.oci.image.manifest.v1+json", "config": "application/vnd.oci.image.config.v1+json",
             "layer": "application/vnd.oci.image.layer.v1.tar"}


def push_image(registry: RunningRegistry, user: str, repository: str, platforms: list[str],
               tag: str | None = None, layers: dict[str, bytes] | None = None,
               types: dict[str, str] = OCI_TYPES, config: dict | None = None) -> tuple[str | None, dict[str, str]]:
    """Push an image per platform by digest, plus an index under `tag` when given.

    `config`: the image config's config (Env, Entrypoint); by default PATH=/bin.
    `layers` gives each platform's one layer (a tar); by default a few bytes that no runtime could use.
    `types`: OCI media types (BuildKit's default), or DOCKER_TYPES.
    Returns (index digest or None, {platform: manifest digest}): what BuildKit leaves in a registry.
    """
    client = Client(registry, user)
    digests, entries = {}, []
    for platform in platforms:
        os_name, arch = platform.split("/")[:2]
        layer = (layers or {}).get(platform) or f"layer for {platform}".encode()
        image_config = json.dumps({"architecture": arch, "os": os_name, "config": config or {"Env": ["PATH=/bin"]},
                                   "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]}}).encode()
        for blob in (layer, image_config):
            client.push_blob(repository, blob)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": types["manifest"],
            "config": {"mediaType": types["config"], "digest": digest_of(image_config), "size": len(image_config)},
            "layers": [{"mediaType": types["layer"], "digest": digest_of(layer), "size": len(layer)}],
        }).encode()
        digests[platform] = client.push_manifest(repository, digest_of(manifest), types["manifest"], manifest)
        entries.append({"mediaType": types["manifest"], "digest": digest_of(manifest),
                        "size": len(manifest), "platform": {"os": os_name, "architecture": arch}})
    if tag is None:
        return None, digests
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    return client.push_manifest(repository, tag, "application/vnd.oci.image.index.v1+json", index), digests


def read_manifest(registry: RunningRegistry, user: str, repository: str, reference: str) -> tuple[str, dict, str]:
    """(content type, manifest, digest) of a tag or digest."""
    return Client(registry, user).manifest(repository, reference)


PROVENANCE, SPDX = "https://slsa.dev/provenance/v1", "https://spdx.dev/Document"


def push_attested(registry: RunningRegistry, user: str, repository: str, platforms: list[str],
                  predicates: tuple[str, ...] = (PROVENANCE,)) -> tuple[str, dict[str, str], dict[str, str]]:
    """What BuildKit pushes with attestations on: each platform's image, an attestation manifest per image (one
    in-toto layer per predicate, platform unknown/unknown, tied to it by annotations), one index of all.
    Returns (index digest, {platform: image digest}, {platform: attestation manifest digest})."""
    client = Client(registry, user)
    _, images = push_image(registry, user, repository, platforms)
    entries, attestations = [], {}
    for platform, image in images.items():
        os_name, arch = platform.split("/")[:2]
        entries.append({"mediaType": OCI_TYPES["manifest"], "digest": image, "size": _size(client, repository, image),
                        "platform": {"os": os_name, "architecture": arch}})
        layers = []
        for predicate_type in predicates:
            statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "predicateType": predicate_type,
                                    "subject": [{"name": "_", "digest": {"sha256": image.split(":")[1]}}],
                                    "predicate": {}}).encode()
            client.push_blob(repository, statement)
            layers.append({"mediaType": "application/vnd.in-toto+json", "digest": digest_of(statement),
                           "size": len(statement), "annotations": {"in-toto.io/predicate-type": predicate_type}})
        config = b"{}"
        client.push_blob(repository, config)
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_TYPES["manifest"],
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config),
                                      "size": len(config)}, "layers": layers}).encode()
        attestations[platform] = client.push_manifest(repository, digest_of(body), OCI_TYPES["manifest"], body)
    for platform, image in images.items():
        entries.append({"mediaType": OCI_TYPES["manifest"], "digest": attestations[platform],
                        "size": _size(client, repository, attestations[platform]),
                        "platform": {"os": "unknown", "architecture": "unknown"},
                        "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                        "vnd.docker.reference.digest": image}})
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    return client.push_manifest(repository, digest_of(index), "application/vnd.oci.image.index.v1+json", index), \
        images, attestations


def _size(client: Client, repository: str, digest: str) -> int:
    status, _, body = client.request("GET", f"/v2/{repository}/manifests/{digest}", headers={"Accept": ", ".join(MANIFEST_TYPES)})
    assert status == 200
    return len(body)
