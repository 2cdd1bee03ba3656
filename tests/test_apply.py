"""The API client: a token looked up once for a burst of requests, and again as soon as the server refuses it."""
import aiohttp.web
import kubernetes
import pytest
from aiohttp.test_utils import TestServer

from kiln.apply import Kube, KubeError


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
