"""kopf and the bare client's writes, nothing of kiln's: what any kopf operator pays to start a build.

    KOPF_FLOOR_SERVER=URL kopf run --standalone --namespace=NS bench/kopf_floor.py

For each ImageBuild that appears, once its watch event arrives, it makes the bare client's writes
(bench/bare_client.py): no cache, no registry, no decision. bench/test_scale.py sets its latency beside
the bare client's and kiln's, so that what kopf costs and what kiln costs can be told apart.

With KOPF_FLOOR_WATCH_JOBS=1 it also watches the Jobs it makes and does nothing with their events: what an
operator that follows its build Jobs, as kiln must, receives on top (bench/test_real_apiserver.py).
"""
import os

import kopf

from bare_client import session, writes


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
    settings.scanning.disabled = True
    memo.session = session(os.environ["KOPF_FLOOR_SERVER"], "bench-floor")


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_):
    await memo.session.close()


@kopf.on.event("kiln.dev", "v1alpha1", "imagebuilds")
async def imagebuild(type: str, body: kopf.Body, memo: kopf.Memo, **_):
    if type == "ADDED" and not body.get("status"):
        await writes(memo.session, dict(body))


if os.environ.get("KOPF_FLOOR_WATCH_JOBS"):
    @kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": "kiln"})
    async def job(**_):
        pass
