# kiln: `make run` installs and starts the operator against the current kube context (or, with
# none reachable, a local cluster it starts, with the operator Deployment built from this checkout);
# `make test` installs everything the tests need and runs them.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo --preserve-env=KILN_CACHE,KILN_CLUSTER_DIR)
# Pinned upstream builds live here, outside the checkout (see cluster/versions.py).
export KILN_CACHE ?= $(HOME)/.cache/kiln
# The local cluster's state and its admin kubeconfig.
export KILN_CLUSTER_DIR ?= /var/lib/kiln-cluster
LOCAL_KUBECONFIG := $(KILN_CLUSTER_DIR)/admin.kubeconfig
# One version: the package's (operator/kiln/__init__.py), `kiln --version`, the image tag.
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' operator/kiln/__init__.py)
# The operator image in the local cluster's registry (cluster/registry.py), as manifests/local/ names it.
LOCAL_IMAGE := 10.88.0.3:5000/kiln/operator:$(VERSION)
# Debian packages: the CNCF distribution registry and htpasswd (the local cluster's registry and test servers),
# sshd (test servers); runc (buildkitd of the buildkit tier), the CNI plugins, iptables (kube-proxy), mmdebstrap and
# uidmap (the local cluster, its images and the operator image); libseccomp-dev and pkg-config (the nodes' runc, built
# from its Go module); QEMU for arm64.
DEBS := docker-registry apache2-utils openssh-server runc containernetworking-plugins iptables mmdebstrap uidmap \
	libseccomp-dev pkg-config \
	qemu-user-static busybox
# kubectl and buildctl at the pinned versions come first on PATH.
KUBE_BIN = $(shell python3 -c 'from cluster.versions import KUBERNETES, bin_dir; print(bin_dir(KUBERNETES))')
BUILDKIT_BIN = $(shell python3 -c 'from cluster.versions import BUILDKIT, bin_dir; print(bin_dir(BUILDKIT))')
COSIGN_BIN = $(shell python3 -c 'from cluster.versions import COSIGN, bin_dir; print(bin_dir(COSIGN))')
PYTEST = $(PY) -m pytest
# pytest exits 5 when it collected no test: that is a failure here, never a pass.
NO_TESTS_IS_FAILURE = rc=$$?; if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests" >&2; exit 1; fi; exit $$rc

.PHONY: install system-deps buildkit supply-chain cosign image test lint run env render deploy cluster cluster-down e2e bench \
	bench-builds clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

system-deps:
	@missing=""; for p in $(DEBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# BuildKit (buildkitd, buildctl) from its Go module at the pinned version, for the buildkit tier.
buildkit:
	python3 -m cluster build buildkit

# cosign (kiln signs with it; the tests verify with it) and syft for both architectures (the tests' SBOM generator
# image), from their Go modules at the pinned versions.
supply-chain: cosign
	python3 -m cluster build syft syft:arm64

cosign:
	python3 -m cluster build cosign

# The operator image, without Docker: the pinned BuildKit builds Dockerfile FROM a Debian base made here
# (cluster/operator_image.py) into build/kiln-operator.tar; IMAGE=registry/repo:tag pushes it there too.
image: system-deps supply-chain
	$(SUDO) python3 -m cluster image $(or $(IMAGE),ghcr.io/kiln-dev/kiln:$(VERSION)) $(if $(IMAGE),--push)

test: system-deps install buildkit supply-chain
	@PATH="$(KUBE_BIN):$(BUILDKIT_BIN):$(COSIGN_BIN):$$PATH" $(PYTEST) $(PYTEST_ARGS); $(NO_TESTS_IS_FAILURE)

lint: install
	$(VENV)/bin/ruff check operator tests bench cluster
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests/spec/test_crd_schema.py -k "description or printer_column"
	@# The benchmarks run apart (make bench); that they still import is checked here.
	$(PY) -m pytest -q --collect-only -p no:cacheprovider bench/ >/dev/null

# A local cluster from pinned upstream releases (root: it runs node agents and makes a bridge).
cluster: system-deps
	$(SUDO) python3 -m cluster up

cluster-down:
	$(SUDO) python3 -m cluster down

# Against KUBECONFIG when it is set (the operator image from KILN_E2E_IMAGE), else the local cluster with the
# operator image built from this checkout. A local cluster this started is stopped at the end, unless
# KILN_KEEP_CLUSTER=1; one that was running already stays.
E2E_TESTS ?= tests/e2e
e2e: system-deps install supply-chain
	@started=""; \
	if [ -z "$$KUBECONFIG" ]; then \
	  python3 -m cluster status || started=1; \
	  $(MAKE) --no-print-directory cluster image IMAGE=$(LOCAL_IMAGE) || { rc=$$?; [ -z "$$started" ] || [ -n "$$KILN_KEEP_CLUSTER" ] || $(MAKE) --no-print-directory cluster-down; exit $$rc; }; \
	fi; \
	KILN_E2E=1 KILN_E2E_IMAGE="$${KILN_E2E_IMAGE:-$(LOCAL_IMAGE)}" KUBECONFIG="$${KUBECONFIG:-$(LOCAL_KUBECONFIG)}" \
	  PATH="$(KUBE_BIN):$(BUILDKIT_BIN):$(COSIGN_BIN):$$PATH" $(PYTEST) $(E2E_TESTS) -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ -n "$$started" ] && [ -z "$$KILN_KEEP_CLUSTER" ]; then $(MAKE) --no-print-directory cluster-down; fi; \
	if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The current kube context when its API server answers: the operator runs here, on this machine. Otherwise the
# local cluster (started when it is not running) with the operator Deployment built from this checkout.
run: install
	@if [ "$$KUBECONFIG" != "$(LOCAL_KUBECONFIG)" ] && $(VENV)/bin/python -c 'import sys; from kiln.clients.kube import cluster_problem; sys.exit(bool(cluster_problem()))'; then \
	  PATH="$(KUBE_BIN):$(COSIGN_BIN):$$PATH" kubectl apply -k crds/ && $(VENV)/bin/kiln run $(KOPF_ARGS); \
	else \
	  echo "make run: no reachable cluster; the local one, with kiln built from this checkout (the first time builds the cluster: about 15 minutes)" >&2; \
	  $(MAKE) --no-print-directory cluster image IMAGE=$(LOCAL_IMAGE) && \
	  export KUBECONFIG=$(LOCAL_KUBECONFIG) PATH="$(KUBE_BIN):$$PATH" && \
	  kubectl apply -k manifests/local/ && \
	  kubectl --namespace=kiln-system set image deployment/kiln-operator operator=$(LOCAL_IMAGE)@$$(cat build/kiln-operator.digest) && \
	  kubectl --namespace=kiln-system rollout status deployment/kiln-operator --timeout=5m && \
	  echo "make run: kiln is Ready in the local cluster. In your shell: eval \"\$$(make --silent env)\"" >&2; \
	fi

# The local cluster's kubeconfig and the pinned kubectl, for a shell: eval "$(make --silent env)"
env:
	@echo "export KUBECONFIG=$(LOCAL_KUBECONFIG) PATH=$(KUBE_BIN):\$$PATH"

# The samples' Secrets are yours to create; the tests' fixture Secrets stand in for them here.
render: install
	$(VENV)/bin/kiln render -f manifests/samples/ -f tests/fixtures/secrets.yaml

deploy:
	kubectl apply -k manifests/

bench: system-deps install
	$(PY) -m pytest -q bench/ -p no:cacheprovider
	$(MAKE) --no-print-directory bench-builds

# Real builds on the local cluster, apply to Ready: a pod per build, a warm builder, raw buildctl (docs/builders.md).
bench-builds:
	$(MAKE) --no-print-directory e2e E2E_TESTS=tests/e2e/bench_builds.py PYTEST_ARGS="-s $(PYTEST_ARGS)"

clean:
	rm -rf $(VENV) .pytest_cache
