# The operator image. `make image` builds it without Docker, with the pinned BuildKit, FROM a Debian base
# made here that already holds kiln's pinned dependencies (cluster/operator_image.py). With Docker:
#   docker build -t ghcr.io/kiln-dev/kiln:$(python3 -c 'import sys; sys.path.insert(0, "operator"); import kiln; print(kiln.__version__)') .
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md /src/
COPY operator /src/operator
COPY crds /src/crds
RUN python3 -m pip install --no-cache-dir /src && rm -rf /src
USER 65532:65532
ENTRYPOINT ["kiln"]
CMD ["run", "--all-namespaces", "--standalone"]
