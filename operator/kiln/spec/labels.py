"""The labels, annotations and timestamps kiln writes and reads back: one spelling of each."""
from __future__ import annotations

import datetime

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED = {MANAGED_BY: "kiln"}  # on everything kiln makes: the watches select by it
IMAGEBUILD = "kiln.dev/imagebuild"  # a build's children: whose they are (short_name of the ImageBuild)
BUILD_ID = "kiln.dev/build-id"  # which build of it
GENERATION = "kiln.dev/generation"
UNIT = "kiln.dev/unit"  # which pod of the build (a platform's, or "all")
CACHE_VOLUME = "kiln.dev/cache-volume"  # the local cache volume a build pod holds
BUILT_BY = "kiln.dev/built-by"  # annotation: native or qemu
ATTEMPT = "kiln.dev/attempt"  # annotation: 0 for the first run of a unit
PLATFORMS = "kiln.dev/platforms"  # annotation: what the unit builds
REGISTRY_LOGIN = "kiln.dev/registry-login"  # "true" on a Secret any login of its namespace may use (and kiln watches)
LOGINS_ALLOWED = "kiln.dev/registry-logins"  # annotation on a Secret: the logins that may use it, comma-separated
BUILD_SECRET = "kiln.dev/build-secret"  # "true" on a Secret any ImageBuild of its namespace may mount
BUILDS_ALLOWED = "kiln.dev/image-builds"  # annotation on a Secret: the ImageBuilds that may mount it
REBUILD = "kiln.dev/rebuild"  # annotation on an ImageBuild: a new value builds the same spec again
DEFAULT_BUILDER = "kiln.dev/default-builder"  # on a Namespace: "warm" makes warm builders its builds' default


def iso(moment: datetime.datetime) -> str:
    """A timestamp as the API server writes them (RFC 3339, UTC, seconds)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
