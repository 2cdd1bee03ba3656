"""kiln: build container images in Kubernetes with BuildKit.

The data flows through modules named for their step:
parse -> resolve -> render -> apply -> observe -> status.
"""

# The one version: the package (pyproject reads it), `kiln --version`, the image tag (Makefile, manifests/).
__version__ = "0.2.0"
GROUP = "kiln.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
