"""The registry client against real registries on 127.0.0.1: Basic and Bearer-token auth, index assembly."""
import asyncio
import contextlib
import datetime
import http.server
import ipaddress
import json
import threading

import pytest

from kiln.build.credentials import Credentials
from kiln.build.questions import Attestation, PlatformImage
from kiln.clients.registry import (
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    AddressGuard,
    Registry,
    RegistryClient,
    RegistryError,
    assemble_index,
    image_platforms,
)
from kiln.spec import reasons
from kiln.spec.addresses import forbidden_address
from kiln.spec.references import MANIFEST_MEDIA_TYPES
from kiln.spec.settings import Settings

from conftest import BASIC_USERS, TOKEN_USERS
from registries import (
    DOCKER_TYPES,
    PROVENANCE,
    SPDX,
    Client,
    digest_of,
    push_attested,
    push_image,
    silent_server,
    start_token_registry,
)

pytestmark = pytest.mark.registry


def client(host: str, user: str | None, password: str | None, *, insecure: bool = True, timeout: float = 5.0,
           ca_pem: str | None = None, guard: AddressGuard | None = None):
    return RegistryClient(Registry(host, insecure=insecure, ca_pem=ca_pem), Credentials(user, password) if user else None,
                          timeout=timeout, guard=guard or AddressGuard())


async def refusal(host, user, password, *, check_push: str | None = None, **kwargs) -> RegistryError:
    async with client(host, user, password, **kwargs) as registry:
        with pytest.raises(RegistryError) as caught:
            await (registry.check_push(check_push) if check_push else registry.verify())
    assert password is None or password not in str(caught.value)
    return caught.value


async def test_basic_auth_registry_verifies_the_right_password(basic_registry):
    async with client(basic_registry.host, "alice", BASIC_USERS["alice"]) as registry:
        assert (await registry.verify()).scheme == "Basic"


async def test_basic_auth_registry_refuses_a_wrong_password(basic_registry):
    error = await refusal(basic_registry.host, "alice", "wrong-password")
    assert error.reason == reasons.AUTHENTICATION_FAILED
    assert error.message == f"{basic_registry.host} refused the credentials"


async def test_registry_without_credentials_is_asked_for_them(basic_registry):
    error = await refusal(basic_registry.host, None, None)
    assert error.reason == reasons.AUTHENTICATION_FAILED


async def test_closed_port_is_unreachable():
    listener, host = silent_server()
    listener.close()  # nothing listens there now
    error = await refusal(host, "alice", "pw")
    assert error.reason == reasons.REGISTRY_UNREACHABLE
    assert error.message.startswith(f"cannot connect to {host}")


async def test_registry_that_never_answers_is_unreachable_after_the_timeout():
    listener, host = silent_server()
    with listener:
        error = await refusal(host, "alice", "pw", insecure=False, timeout=0.5)
    assert error.reason == reasons.REGISTRY_UNREACHABLE
    assert error.message == f"{host} did not answer within 0.5s"


async def test_plain_http_registry_needs_insecure(basic_registry):
    error = await refusal(basic_registry.host, "alice", BASIC_USERS["alice"], insecure=False)
    assert error.reason == reasons.REGISTRY_UNREACHABLE
    assert "insecure" in error.message


async def test_token_registry_verifies_through_the_bearer_flow(token_registry):
    async with client(token_registry.host, "pusher", TOKEN_USERS["pusher"][0]) as registry:
        assert (await registry.verify()).scheme == "Bearer"
    request = token_registry.issuer.requests[-1]
    assert request["user"] == "pusher" and request["service"] == ["kiln-test-registry"]


async def test_a_token_that_expires_while_the_session_is_open_is_replaced(token_registry):
    # distribution accepts a token up to 60 s past its expiry (clock skew): these live about 2 s.
    token_registry.issuer.lifetime = datetime.timedelta(seconds=-58)
    try:
        async with client(token_registry.host, "pusher", TOKEN_USERS["pusher"][0]) as registry:
            await registry.check_push("team/app")
            issued = len(token_registry.issuer.requests)
            await registry.check_push("team/app")
            assert len(token_registry.issuer.requests) == issued  # a live token is used again
            await asyncio.sleep(3)
            await registry.check_push("team/app")  # would fail with the expired token (401 on the upload)
            assert len(token_registry.issuer.requests) == issued + 1  # replaced once
    finally:
        token_registry.issuer.lifetime = datetime.timedelta(minutes=5)


async def test_token_service_refuses_a_wrong_password(token_registry):
    error = await refusal(token_registry.host, "pusher", "wrong-password")
    assert error.reason == reasons.AUTHENTICATION_FAILED
    assert "token service" in error.message


async def test_push_preflight_passes_with_a_push_scoped_token(token_registry):
    async with client(token_registry.host, "pusher", TOKEN_USERS["pusher"][0]) as registry:
        await registry.check_push("team/app")
    assert token_registry.issuer.requests[-1]["scope"] == ["repository:team/app:pull,push"]


async def test_push_preflight_names_the_repository_a_pull_only_user_cannot_push(token_registry):
    error = await refusal(token_registry.host, "reader", TOKEN_USERS["reader"][0], check_push="team/app")
    assert error.reason == reasons.PUSH_DENIED
    assert error.message == f"{token_registry.host} denies push to team/app"


async def test_push_preflight_with_basic_auth_starts_and_cancels_an_upload(basic_registry):
    uploads = basic_registry.storage / "docker/registry/v2/repositories/team/preflight/_uploads"
    async with client(basic_registry.host, "alice", BASIC_USERS["alice"]) as registry:
        await registry.check_push("team/preflight")
    (started,) = uploads.iterdir()  # one upload was started
    # and cancelled: distribution removes its data and start time (it keeps the empty hash state behind)
    assert sorted(p.name for p in started.rglob("*") if p.is_file()) == ["0"]
    assert not (started / "data").exists() and not (started / "startedat").exists()


async def test_push_preflight_without_credentials_is_denied(basic_registry):
    error = await refusal(basic_registry.host, None, None, check_push="team/app")
    assert error.reason in (reasons.PUSH_DENIED, reasons.AUTHENTICATION_FAILED)


@pytest.mark.parametrize("host", ["169.254.169.254", "169.254.169.254:80", "100.100.100.200", "[fe80::1]:5000",
                                  "[::ffff:169.254.169.254]:5000", "[::ffff:a9fe:a9fe]", "[64:ff9b::a9fe:a9fe]",
                                  "[2002:a9fe:a9fe::1]:443"])
async def test_link_local_and_metadata_addresses_are_refused_without_a_connection(host):
    error = await refusal(host, "alice", "pw")
    assert error.reason == reasons.ADDRESS_NOT_ALLOWED
    assert "KILN_ALLOW_LINK_LOCAL" in error.message


@pytest.mark.parametrize(("address", "forbidden"), [
    ("169.254.169.254", True), ("169.254.1.1", True), ("fe80::1", True), ("100.100.100.200", True), ("fd00:ec2::254", True),
    ("127.0.0.1", False), ("10.0.0.5", False), ("::1", False), ("2001:db8::1", False),
    # IPv6 forms that carry an IPv4 address, each holding the metadata address
    ("::ffff:169.254.169.254", True), ("::ffff:a9fe:a9fe", True),  # IPv4-mapped, both spellings
    ("::169.254.169.254", True),  # IPv4-compatible (deprecated, still parsed)
    ("2002:a9fe:a9fe::1", True),  # 6to4
    ("2001:0:4136:e378:8000:63bf:5601:5601", True),  # Teredo, client 169.254.169.254 (obfuscated)
    ("64:ff9b::a9fe:a9fe", True), ("64:ff9b:1::a9fe:a9fe", True),  # NAT64, well-known and local-use prefixes
    ("::ffff:100.100.100.200", True), ("64:ff9b::6464:64c8", True),  # Alibaba's metadata address, mapped
    ("::ffff:127.0.0.1", False), ("2002:0a00:0005::1", False), ("64:ff9b::a00:5", False),  # not link-local inside
    ("[::ffff:169.254.169.254]", True), ("fe80::1%eth0", True),
    ("168.63.129.16", True), ("::ffff:168.63.129.16", True),  # Azure's wire server
    ("::ffff:0:a9fe:a9fe", True),  # IPv4-translated (RFC 2765)
    # NAT64 local-use prefixes of every RFC 6052 length, the IPv4 address stepping over the reserved byte 8
    ("64:ff9b:1:a9fe:a9:fe00::", True), ("64:ff9b:1:1:a9:fea9:fe00:0", True),
    ("64:ff9b:1:0:a9:fea9:fe00:0", True), ("64:ff9b:1::a9fe:a9fe", True), ("64:ff9b:1:a00:5:0:0:0", False),
], ids=lambda v: str(v))
def test_forbidden_addresses_are_link_local_and_metadata_in_any_form(address, forbidden):
    assert forbidden_address(address) is forbidden


async def test_private_ca_registry_verifies_with_its_ca_bundle(tls_registry):
    async with client(tls_registry.host, "dave", "dave-Secret-pw6", insecure=False, ca_pem=tls_registry.ca_pem) as registry:
        assert (await registry.verify()).scheme == "Basic"


async def test_private_ca_registry_is_refused_without_its_ca_bundle(tls_registry):
    error = await refusal(tls_registry.host, "dave", "dave-Secret-pw6", insecure=False)
    assert error.reason == reasons.REGISTRY_UNREACHABLE
    assert error.message.startswith(f"TLS with {tls_registry.host} failed") and "caBundle" in error.message


async def test_insecure_skips_certificate_verification_but_still_speaks_tls(tls_registry):
    async with client(tls_registry.host, "dave", "dave-Secret-pw6", insecure=True) as registry:
        assert (await registry.verify()).scheme == "Basic"


async def test_a_name_that_resolves_to_a_metadata_address_is_refused(monkeypatch):
    import aiohttp

    async def resolve(self, host, port=0, family=0):
        return [{"hostname": host, "host": "169.254.169.254", "port": port, "family": 2, "proto": 0, "flags": 0}]

    monkeypatch.setattr(aiohttp.ThreadedResolver, "resolve", resolve)
    error = await refusal("registry.example.internal:5000", "alice", "pw")
    assert error.reason == reasons.ADDRESS_NOT_ALLOWED
    assert error.message == ("registry.example.internal resolves to 169.254.169.254, which is a link-local or cloud "
                             "metadata address; the operator setting KILN_ALLOW_LINK_LOCAL allows it")


PLATFORMS = ["linux/amd64", "linux/arm64"]
OCI_MANIFEST = MANIFEST_MEDIA_TYPES[0]


@pytest.mark.parametrize(("types", "index_type"), [({}, OCI_INDEX), (DOCKER_TYPES, DOCKER_MANIFEST_LIST)],
                         ids=["oci-children-oci-index", "docker-children-docker-manifest-list"])
async def test_an_assembled_index_is_of_the_kind_of_its_children_and_tags_every_tag_through_bearer_tokens(
        token_registry, types, index_type):
    password = TOKEN_USERS["pusher"][0]
    _, digests = await asyncio.to_thread(push_image, token_registry, "pusher", "team/multi", PLATFORMS,
                                         **({"types": types} if types else {}))
    async with client(token_registry.host, "pusher", password) as registry:
        digest, images = await assemble_index(registry, "team/multi", [(p, digests[p]) for p in PLATFORMS], ("v1", "latest"))
    assert images == [PlatformImage(p, digests[p]) for p in PLATFORMS]
    reader = Client(token_registry, "pusher")
    for tag in ("v1", "latest"):
        media_type, index, tagged = await asyncio.to_thread(reader.manifest, "team/multi", tag)
        assert (media_type, index["mediaType"], tagged) == (index_type, index_type, digest)
        assert [(m["platform"]["architecture"], m["digest"]) for m in index["manifests"]] == \
               [(p.split("/")[1], digests[p]) for p in PLATFORMS]


async def test_an_index_is_assembled_from_a_native_image_and_an_emulated_pods_index_of_two_platforms(token_registry):
    """auto: amd64 built natively, arm64 and riscv64 emulated in one pod that pushed an index of both."""
    password = TOKEN_USERS["pusher"][0]
    _, native = await asyncio.to_thread(push_image, token_registry, "pusher", "team/auto", ["linux/amd64"])
    emulated_index, emulated = await asyncio.to_thread(push_image, token_registry, "pusher", "team/auto",
                                                       ["linux/arm64", "linux/riscv64"], tag="emulated")
    children = [("linux/amd64", native["linux/amd64"]), ("linux/arm64", emulated_index),
                ("linux/riscv64", emulated_index)]
    async with client(token_registry.host, "pusher", password) as registry:
        _, images = await assemble_index(registry, "team/auto", children, ("v1",))
    assert images == [PlatformImage("linux/amd64", native["linux/amd64"]), PlatformImage("linux/arm64", emulated["linux/arm64"]),
                      PlatformImage("linux/riscv64", emulated["linux/riscv64"])]


async def test_an_index_with_a_child_missing_from_the_registry_is_not_pushed(token_registry):
    _, digests = await asyncio.to_thread(push_image, token_registry, "pusher", "team/partial", ["linux/amd64"])
    missing = "sha256:" + "0" * 64
    async with client(token_registry.host, "pusher", TOKEN_USERS["pusher"][0]) as registry:
        with pytest.raises(RegistryError) as caught:
            await assemble_index(registry, "team/partial", [("linux/amd64", digests["linux/amd64"]),
                                                            ("linux/arm64", missing)], ("v1",))
    assert caught.value.reason == reasons.IMAGE_NOT_FOUND and not caught.value.transient
    status, _, _ = await asyncio.to_thread(Client(token_registry, "pusher").request, "GET", "/v2/team/partial/manifests/v1")
    assert status == 404  # nothing tagged


async def test_a_bearer_realm_at_a_metadata_address_is_not_followed_and_gets_no_credentials():
    """A registry (here a bare HTTP handler on loopback) may name any realm; kiln checks it before connecting."""
    import http.server
    import threading

    class Challenge(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Bearer realm="http://[::ffff:169.254.169.254]:80/token",service="x"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Challenge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        error = await refusal(f"127.0.0.1:{server.server_address[1]}", "alice", "pw-for-the-registry-only")
    finally:
        server.shutdown()
    assert error.reason == reasons.ADDRESS_NOT_ALLOWED and "::ffff:a9fe:a9fe" in error.message


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A bare registry (or any server): answers each request from `answers` by method, and records it."""
    server: http.server.ThreadingHTTPServer

    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        status, headers = self.server.answers(self)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def recording_server(host: str, answers):
    server = http.server.ThreadingHTTPServer((host, 0), _Recorder)
    server.seen, server.answers = [], answers
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _basic_registry_answering_uploads_with(location: str):
    def answers(request):
        if not request.headers.get("Authorization"):
            return 401, {"WWW-Authenticate": 'Basic realm="test"'}
        if request.command == "POST":
            return 202, {"Location": location}
        return 204, {}
    return answers


@pytest.mark.parametrize("elsewhere", ["http://127.0.0.2:{port}/_admin/indices/production?confirm=true",
                                       "//127.0.0.2:{port}/_admin/indices/production"])
async def test_an_upload_location_on_another_origin_gets_no_request_and_no_credentials(elsewhere):
    with recording_server("127.0.0.2", lambda request: (204, {})) as other:
        location = elsewhere.format(port=other.server_address[1])
        with recording_server("127.0.0.1", _basic_registry_answering_uploads_with(location)) as registry:
            async with client(f"127.0.0.1:{registry.server_address[1]}", "alice", "alice-upload-pw") as session:
                await session.check_push("team/app")
    assert other.seen == []
    assert [method for method, _, _ in registry.seen] == ["POST", "POST"]  # challenged, then started; no DELETE


async def test_an_upload_location_on_the_registry_itself_is_cancelled_with_the_credentials():
    with recording_server("127.0.0.1", lambda request: (204, {})) as registry:
        port = registry.server_address[1]
        registry.answers = _basic_registry_answering_uploads_with(f"http://127.0.0.1:{port}/v2/team/app/blobs/uploads/u1")
        async with client(f"127.0.0.1:{port}", "alice", "alice-upload-pw") as session:
            await session.check_push("team/app")
    method, path, authorization = registry.seen[-1]
    assert (method, path) == ("DELETE", "/v2/team/app/blobs/uploads/u1") and authorization.startswith("Basic ")


async def test_a_plain_http_token_realm_of_a_tls_registry_gets_no_credentials_unless_the_login_is_insecure(tmp_path):
    registry = start_token_registry(tmp_path, TOKEN_USERS, tls=True, realm_tls=False)
    try:
        password = TOKEN_USERS["pusher"][0]
        error = await refusal(registry.host, "pusher", password, insecure=False, ca_pem=registry.ca_pem)
        assert error.reason == reasons.INSECURE_TOKEN_REALM and not error.transient
        assert registry.issuer.requests == []  # the realm was never asked
        async with client(registry.host, "pusher", password, insecure=True) as session:  # said so by the login
            assert (await session.verify()).scheme == "Bearer"
    finally:
        registry.stop()


async def test_a_tls_registry_with_a_tls_token_realm_on_another_port_verifies(tmp_path):
    registry = start_token_registry(tmp_path, TOKEN_USERS, tls=True)
    try:
        async with client(registry.host, "pusher", TOKEN_USERS["pusher"][0], insecure=False,
                          ca_pem=registry.ca_pem) as session:
            assert (await session.verify()).scheme == "Bearer"
        assert [r["user"] for r in registry.issuer.requests] == ["pusher"]
    finally:
        registry.stop()


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}"], ids=["literal", "name"])
async def test_a_registry_in_a_denied_range_is_refused_without_a_connection(basic_registry, host):
    port = basic_registry.host.rsplit(":", 1)[1]
    guard = AddressGuard(deny=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")))
    error = await refusal(host.format(port=port), "alice", BASIC_USERS["alice"], guard=guard)
    assert error.reason == reasons.ADDRESS_NOT_ALLOWED and "KILN_REGISTRY_DENY_CIDRS" in error.message


def test_the_denied_ranges_come_from_the_operator_setting_and_a_typo_stops_it():
    assert AddressGuard.of(Settings.from_env({"KILN_REGISTRY_DENY_CIDRS": "10.0.0.0/8, fd00::/8"})).deny == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    with pytest.raises(ValueError, match="'10.0.0.0/33' is not an address range"):
        Settings.from_env({"KILN_REGISTRY_DENY_CIDRS": "10.0.0.0/33"})


async def test_an_assembled_index_carries_each_platforms_attestation_manifest_as_buildkit_attached_it(token_registry):
    """native: each pod pushed an index of its image and its attestations; the tag gets both, still tied together."""
    password = TOKEN_USERS["pusher"][0]
    children, images, attestations = [], {}, {}
    for platform in PLATFORMS:
        index, image, attestation = await asyncio.to_thread(push_attested, token_registry, "pusher", "team/attested",
                                                            [platform], (PROVENANCE, SPDX))
        children.append((platform, index))
        images.update(image)
        attestations.update(attestation)
    async with client(token_registry.host, "pusher", password) as registry:
        digest, found = await assemble_index(registry, "team/attested", children, ("v1",))
    assert found == [PlatformImage(p, images[p], Attestation(attestations[p], (PROVENANCE, SPDX))) for p in PLATFORMS]
    media_type, index, tagged = await asyncio.to_thread(Client(token_registry, "pusher").manifest, "team/attested", "v1")
    assert (media_type, tagged) == (OCI_INDEX, digest)
    assert [(m["platform"]["os"], m["digest"], (m.get("annotations") or {}).get("vnd.docker.reference.digest"))
            for m in index["manifests"]] == [
        ("linux", images["linux/amd64"], None), ("linux", images["linux/arm64"], None),
        ("unknown", attestations["linux/amd64"], images["linux/amd64"]),
        ("unknown", attestations["linux/arm64"], images["linux/arm64"])]


async def test_the_platforms_of_one_pods_index_come_with_their_attestations(token_registry):
    index, images, attestations = await asyncio.to_thread(push_attested, token_registry, "pusher", "team/one",
                                                          PLATFORMS)
    async with client(token_registry.host, "pusher", TOKEN_USERS["pusher"][0]) as registry:
        found = await image_platforms(registry, "team/one", index, tuple(PLATFORMS))
    assert found == [PlatformImage(p, images[p], Attestation(attestations[p], (PROVENANCE,))) for p in PLATFORMS]


async def test_signatures_are_found_in_the_referrers_tag_of_a_registry_without_the_referrers_api(token_registry):
    _, images = await asyncio.to_thread(push_image, token_registry, "pusher", "team/signed", ["linux/amd64"])
    image = images["linux/amd64"]
    async with client(token_registry.host, "pusher", TOKEN_USERS["pusher"][0]) as registry:
        assert await registry.signatures("team/signed", image) == []
        bundle = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                             "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(b"{}"), "size": 2},
                             "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": image, "size": 1}}).encode()
        await asyncio.to_thread(Client(token_registry, "pusher").push_blob, "team/signed", b"{}")
        await registry.put_manifest("team/signed", digest_of(bundle), OCI_MANIFEST, bundle)
        fallback = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest_of(bundle), "size": len(bundle),
             "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json"},
            {"mediaType": OCI_MANIFEST, "digest": image, "size": 1, "artifactType": "application/spdx+json"}]}).encode()
        await registry.put_manifest("team/signed", image.replace(":", "-"), OCI_INDEX, fallback)
        assert await registry.signatures("team/signed", image) == [digest_of(bundle)]
