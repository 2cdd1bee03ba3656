"""kiln: build container images in Kubernetes with BuildKit.

Layers, each importing only those below it (make lint checks it): cli and render_cli, controller (kopf's
handlers and the reconcilers), clients (the Kubernetes API, its watch cache, registries, events), build
(pure: credentials, platforms, render, outcomes, decide, status), spec (pure: the API contract). metrics
is a leaf any layer may use. docs/architecture.md walks one ImageBuild through them.
"""

# The one version: the package (pyproject reads it), `kiln --version`, the image tag (Makefile, manifests/).
__version__ = "0.4.0"
GROUP = "kiln.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
