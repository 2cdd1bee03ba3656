"""kopf entry points. Each handler delegates to the pure layers and to apply."""
from __future__ import annotations

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    # Keep kopf's own bookkeeping in annotations: status belongs to users.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kiln.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kiln.dev")
    settings.posting.level = 20
