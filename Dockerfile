# The operator image. `make image` builds it without Docker, with the pinned BuildKit, FROM a Debian base
# made here that already holds kiln's pinned dependencies and cosign (cluster/operator_image.py). With Docker:
#   docker build -t ghcr.io/kiln-dev/kiln:$(python3 -c 'import sys; sys.path.insert(0, "operator"); import kiln; print(kiln.__version__)') .
ARG BASE=python:3.11-slim
# Where cosign comes from (kiln signs images with it): built from its Go module at the pinned version
# (cluster/versions.py), or a base that already has it at /usr/local/bin/cosign.
ARG COSIGN_FROM=cosign-from-source
# Where buildctl comes from (kiln is the BuildKit client of warm builders): BuildKit's image at the pinned version,
# or a base that already has it at /usr/bin/buildctl.
ARG BUILDCTL_FROM=moby/buildkit:v0.34.2
FROM ${BUILDCTL_FROM} AS buildctl
FROM golang:1.26 AS cosign-from-source
RUN CGO_ENABLED=0 GOBIN=/usr/local/bin go install -trimpath -ldflags="-s -w" github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3
FROM ${COSIGN_FROM} AS cosign
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=cosign /usr/local/bin/cosign /usr/local/bin/cosign
COPY --from=buildctl /usr/bin/buildctl /usr/local/bin/buildctl
COPY pyproject.toml README.md /src/
COPY operator /src/operator
COPY crds /src/crds
RUN python3 -m pip install --no-cache-dir /src && rm -rf /src
USER 65532:65532
ENTRYPOINT ["kiln"]
CMD ["run", "--all-namespaces", "--standalone"]
