"""A kopf operator that watches what kiln watches and does nothing: the baseline of the memory figures.

    kopf run --standalone --namespace=NS bench/noop_operator.py
"""
import kopf

MANAGED = {"app.kubernetes.io/managed-by": "kiln"}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    settings.scanning.disabled = True  # as kiln serving named namespaces: no namespace or CRD discovery


@kopf.on.event("kiln.dev", "v1alpha1", "imagebuilds")
def imagebuild(**_):
    pass


@kopf.on.event("kiln.dev", "v1alpha1", "registrylogins")
def login(**_):
    pass


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
def job(**_):
    pass


@kopf.on.event("", "v1", "pods", labels=MANAGED)
def pod(**_):
    pass


@kopf.on.event("", "v1", "secrets", labels={"kiln.dev/registry-login": "true"})
def secret(**_):
    pass
