"""kiln: build container images in Kubernetes with BuildKit.

The data flows through modules named for their step:
parse -> resolve -> render -> apply -> observe -> status.
"""

GROUP = "kiln.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
