"""RegistryLogin reconciliation: the real operator against kmock, verifying against real registries."""
import logging

import pytest

from kiln.spec import reasons

from conftest import BASIC_USERS, TOKEN_USERS, b64, login_objects, ready_of
from kubefake import KubeFake, eventually, operator

pytestmark = [pytest.mark.operator, pytest.mark.registry, pytest.mark.kmock(cls=KubeFake)]
LOGINS = ("kiln.dev/v1alpha1", "registrylogins")


def login(cluster, name="reg"):
    return cluster.get(*LOGINS, name)


async def ready_reason(cluster, reason: str, name: str = "reg") -> dict:
    return await eventually(lambda: ready_of(login(cluster, name)).get("reason") == reason and login(cluster, name),
                            message=f"Ready reason {reason}; last: {ready_of(login(cluster, name))}")


async def apply_all(cluster, objects):
    for obj in objects:
        await cluster.apply(obj)


async def test_right_password_is_verified_and_reported_with_the_username(cluster, basic_registry):
    async with operator():
        await apply_all(cluster, login_objects("reg", basic_registry.host, "alice", BASIC_USERS["alice"]))
        obj = await ready_reason(cluster, reasons.VERIFIED)
    status = obj["status"]
    assert ready_of(obj)["status"] == "True"
    assert ready_of(obj)["message"] == f"alice logged in to {basic_registry.host} (Basic)"
    assert (status["username"], status["server"], status["authScheme"]) == ("alice", basic_registry.host, "Basic")
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["lastVerifiedTime"]


async def test_wrong_password_is_authentication_failed(cluster, basic_registry):
    async with operator():
        await apply_all(cluster, login_objects("reg", basic_registry.host, "alice", "not-the-password"))
        obj = await ready_reason(cluster, reasons.AUTHENTICATION_FAILED)
    assert ready_of(obj)["status"] == "False"
    assert ready_of(obj)["message"] == f"{basic_registry.host} refused the credentials"


async def test_bearer_token_registry_is_verified(cluster, token_registry):
    async with operator():
        await apply_all(cluster, login_objects("reg", token_registry.host, "pusher", TOKEN_USERS["pusher"][0]))
        obj = await ready_reason(cluster, reasons.VERIFIED)
    assert obj["status"]["authScheme"] == "Bearer"


async def test_unreachable_registry_is_reported(cluster):
    async with operator():
        await apply_all(cluster, login_objects("reg", "127.0.0.1:9", "alice", "pw"))
        obj = await ready_reason(cluster, reasons.REGISTRY_UNREACHABLE)
    assert ready_of(obj)["message"].startswith("cannot connect to 127.0.0.1:9")


async def test_missing_secret_is_reported_and_its_creation_is_noticed(cluster, basic_registry):
    secret, login_obj = login_objects("reg", basic_registry.host, "alice", BASIC_USERS["alice"])
    async with operator():
        await cluster.apply(login_obj)
        obj = await ready_reason(cluster, reasons.SECRET_NOT_FOUND)
        assert ready_of(obj)["message"] == "Secret 'reg-creds' does not exist in namespace 'default'"
        await cluster.apply(secret)
        await ready_reason(cluster, reasons.VERIFIED)


async def test_rotating_the_secret_flips_the_status_without_a_restart(cluster, basic_registry):
    secret, login_obj = login_objects("reg", basic_registry.host, "alice", BASIC_USERS["alice"])
    async with operator():
        await apply_all(cluster, [secret, login_obj])
        first = await ready_reason(cluster, reasons.VERIFIED)
        await cluster.apply({**secret, "data": {"username": b64("alice"), "password": b64("rotated-wrong")}})
        await ready_reason(cluster, reasons.AUTHENTICATION_FAILED)
        await cluster.apply({**secret, "data": {"username": b64("bob"), "password": b64(BASIC_USERS["bob"])}})
        obj = await ready_reason(cluster, reasons.VERIFIED)
    assert obj["status"]["username"] == "bob"
    assert ready_of(obj)["lastTransitionTime"] >= ready_of(first)["lastTransitionTime"]


@pytest.mark.parametrize(("secret_change", "reason", "message"), [
    ({"type": "kubernetes.io/tls", "data": {"tls.crt": b64("x")}}, reasons.INVALID_SECRET, "Secret 'reg-creds' has type kubernetes.io/tls"),
    ({"data": {"username": b64("alice")}}, reasons.INVALID_SECRET, "Secret 'reg-creds' has no key 'password'"),
])
async def test_malformed_secret_is_reported_by_name_and_key(cluster, basic_registry, secret_change, reason, message):
    secret, login_obj = login_objects("reg", basic_registry.host, "alice", BASIC_USERS["alice"])
    async with operator():
        await apply_all(cluster, [{**secret, **secret_change}, login_obj])
        obj = await ready_reason(cluster, reason)
    assert message in ready_of(obj)["message"]


async def test_metadata_address_is_refused_unless_allowed(cluster):
    async with operator():
        await apply_all(cluster, login_objects("reg", "169.254.169.254", "alice", "pw"))
        obj = await ready_reason(cluster, reasons.ADDRESS_NOT_ALLOWED)
    assert "KILN_ALLOW_LINK_LOCAL" in ready_of(obj)["message"]


async def test_verify_false_reads_the_secret_without_contacting_the_registry(cluster):
    async with operator():
        await apply_all(cluster, login_objects("reg", "127.0.0.1:9", "alice", "pw", verify=False))
        obj = await ready_reason(cluster, reasons.NOT_VERIFIED)
    assert ready_of(obj)["status"] == "True" and "lastVerifiedTime" not in obj["status"]


async def test_a_spec_change_is_verified_again_and_observed(cluster, basic_registry, second_basic_registry):
    objects = login_objects("reg", basic_registry.host, "alice", BASIC_USERS["alice"])
    async with operator():
        await apply_all(cluster, objects)
        await ready_reason(cluster, reasons.VERIFIED)
        await cluster.apply({**objects[1], "spec": {**objects[1]["spec"], "server": second_basic_registry.host}})
        obj = await ready_reason(cluster, reasons.AUTHENTICATION_FAILED)  # alice has no account there
    assert obj["metadata"]["generation"] == 2 and obj["status"]["observedGeneration"] == 2


async def test_no_credential_reaches_logs_events_or_status(cluster, basic_registry, token_registry, caplog):
    """Debug logging on, every path exercised: no password, token or base64 auth value anywhere."""
    caplog.set_level(logging.DEBUG)
    secrets = [BASIC_USERS["alice"], TOKEN_USERS["pusher"][0], "wrong-Secret-pw9"]
    async with operator("--debug") as runner:
        await apply_all(cluster, login_objects("ok", basic_registry.host, "alice", BASIC_USERS["alice"]))
        await apply_all(cluster, login_objects("bearer", token_registry.host, "pusher", TOKEN_USERS["pusher"][0]))
        await apply_all(cluster, login_objects("bad", basic_registry.host, "alice", "wrong-Secret-pw9"))
        await ready_reason(cluster, reasons.VERIFIED, "ok")
        await ready_reason(cluster, reasons.VERIFIED, "bearer")
        await ready_reason(cluster, reasons.AUTHENTICATION_FAILED, "bad")
        # A whole build too: merged Secret created, mounted, deleted.
        await cluster.apply({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "app"},
                             "spec": {"registryLogins": ["ok", "bearer"], "source": {"url": "https://example.com/c.tgz"},
                                      "output": {"image": f"{basic_registry.host}/team/app"}}})
        job = await eventually(lambda: cluster.jobs() and cluster.jobs()[0], message="the build Job")
        await cluster.finish(job, await cluster.start_pod(job), exit_code=0,
                             message='{"containerimage.digest": "sha256:' + "0" * 64 + '"}')
        await eventually(lambda: (cluster.build("app").get("status") or {}).get("phase") == "Succeeded")
    assert token_registry.issuer.requests, "the Bearer flow ran"
    seen = "\n".join([caplog.text, runner.output, repr(cluster.events()),
                      repr([obj.get("status") for obj in cluster.all(*LOGINS) + cluster.all("kiln.dev/v1alpha1", "imagebuilds")])])
    assert "Handler 'login_changed' is invoked" in caplog.text  # the operator's debug log was captured
    assert "RegistryLogin default/bad: Ready=False (AuthenticationFailed)" in caplog.text
    assert "ImageBuild default/app: BuildSucceeded: pushed" in caplog.text
    for secret in secrets:
        for form in (secret, b64(secret), b64(f"alice:{secret}"), b64(f"pusher:{secret}")):
            assert form not in seen
    assert "eyJ" not in seen  # no JWT (header base64 of '{"')


async def test_a_login_with_a_ca_bundle_verifies_a_private_ca_registry(cluster, tls_registry):
    secret, login_obj = login_objects("reg", tls_registry.host, "dave", "dave-Secret-pw6", insecure=False,
                                      caBundle={"name": "registry-ca"})
    async with operator():
        await apply_all(cluster, [secret, login_obj])
        obj = await ready_reason(cluster, reasons.CA_BUNDLE_NOT_FOUND)
        assert ready_of(obj)["message"] == "ConfigMap 'registry-ca' does not exist"
        await cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "registry-ca"},
                             "data": {"ca.crt": tls_registry.ca_pem}})
        await ready_reason(cluster, reasons.VERIFIED)


async def test_a_secret_that_has_not_opted_in_is_never_sent_to_the_logins_server(cluster):
    """The hostile tenant: a login pointing at a listener of theirs, and a Secret they may not read."""
    import http.server
    import threading

    seen = []

    class Listener(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="x"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Listener)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret, login_obj = login_objects("reg", f"127.0.0.1:{server.server_address[1]}", "dbadmin", "database-password")
    del secret["metadata"]["labels"]
    try:
        async with operator():
            await apply_all(cluster, [secret, login_obj])
            obj = await ready_reason(cluster, reasons.SECRET_NOT_OPTED_IN)
    finally:
        server.shutdown()
    assert seen == [] and "dbadmin" not in str(obj["status"])
    assert "annotate it kiln.dev/registry-logins=reg" in ready_of(obj)["message"]
