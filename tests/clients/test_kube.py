"""The API client: a token looked up once for a burst of requests, and again as soon as the server refuses it;
connections kept open between bursts."""
import time

import aiohttp.connector
import aiohttp.web
import kubernetes
import pytest
from aiohttp.test_utils import TestServer

from kiln.clients.kube import Kube, KubeError


async def test_the_token_is_looked_up_once_for_many_requests_and_again_after_a_401():
    async def version(request: aiohttp.web.Request) -> aiohttp.web.Response:
        if request.headers.get("Authorization") != "Bearer rotated":
            return aiohttp.web.json_response({"message": "Unauthorized"}, status=401)
        return aiohttp.web.json_response({"major": "1"})

    app = aiohttp.web.Application()
    app.router.add_get("/version", version)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    lookups = []

    def refresh(config: kubernetes.client.Configuration) -> None:  # as the library's in-cluster token hook does
        lookups.append(1)
        config.api_key["BearerToken"] = "stale" if len(lookups) == 1 else "rotated"

    config = kubernetes.client.Configuration(host=str(server.make_url("")))
    config.api_key_prefix["BearerToken"] = "Bearer"
    config.refresh_api_key_hook = refresh
    kube = Kube(config)
    try:
        with pytest.raises(KubeError) as refused:
            await kube.request("GET", "/version")
        assert refused.value.status == 401 and "stale" not in str(refused.value)
        for _ in range(5):
            assert await kube.request("GET", "/version") == {"major": "1"}
        assert len(lookups) == 2
    finally:
        await kube.close()
        await server.close()


async def test_a_connection_idle_for_half_a_minute_is_used_again_but_not_one_the_api_server_has_closed(monkeypatch):
    """A burst of builds soon after the last does not open its connections (and pay their TLS handshakes) again;
    the API server closes a connection idle for 90 s, so kiln does not keep it that long."""
    peers = []

    async def version(request: aiohttp.web.Request) -> aiohttp.web.Response:
        peers.append(request.transport.get_extra_info("peername"))
        return aiohttp.web.json_response({"major": "1"})

    app = aiohttp.web.Application()
    app.router.add_get("/version", version)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    kube = Kube(kubernetes.client.Configuration(host=str(server.make_url(""))))
    try:
        for idle in (0, 30, 30 + 90):  # seconds since the first request: past aiohttp's own 15, past the server's 90
            monkeypatch.setattr(aiohttp.connector, "monotonic", lambda idle=idle: time.monotonic() + idle)
            await kube.request("GET", "/version")
        assert peers[1] == peers[0] and peers[2] != peers[0]
    finally:
        await kube.close()
        await server.close()
