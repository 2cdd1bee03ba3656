# kiln: `make run` installs and starts the operator against the current kube context (or, with
# none reachable, a local cluster it starts); `make test` installs everything the tests need and runs them.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo --preserve-env=KILN_CACHE,KILN_CLUSTER_DIR)
# Pinned upstream builds live here, outside the checkout (see cluster/versions.py).
export KILN_CACHE ?= $(HOME)/.cache/kiln
# The local cluster's state and its admin kubeconfig.
export KILN_CLUSTER_DIR ?= /var/lib/kiln-cluster
LOCAL_KUBECONFIG := $(KILN_CLUSTER_DIR)/admin.kubeconfig
# Debian packages: the CNCF distribution registry and sshd (test servers); runc, the CNI plugins,
# mmdebstrap and uidmap (the local cluster and its BuildKit image); QEMU for arm64.
DEBS := docker-registry openssh-server runc containernetworking-plugins mmdebstrap uidmap qemu-user-static
# kubectl and buildctl at the pinned versions come first on PATH.
KUBE_BIN = $(shell python3 -c 'from cluster.versions import KUBERNETES, bin_dir; print(bin_dir(KUBERNETES))')
BUILDKIT_BIN = $(shell python3 -c 'from cluster.versions import BUILDKIT, bin_dir; print(bin_dir(BUILDKIT))')
PYTEST = $(PY) -m pytest
# pytest exits 5 when it collected no test: that is a failure here, never a pass.
NO_TESTS_IS_FAILURE = rc=$$?; if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests" >&2; exit 1; fi; exit $$rc

.PHONY: install system-deps buildkit test lint run render deploy cluster cluster-down e2e bench clean

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

test: system-deps install buildkit
	@PATH="$(KUBE_BIN):$(BUILDKIT_BIN):$$PATH" $(PYTEST) $(PYTEST_ARGS); $(NO_TESTS_IS_FAILURE)

lint: install
	$(VENV)/bin/ruff check operator tests bench cluster
	$(PY) -m pytest -q tests/test_crd_schema.py -k "description or printer_column"

# A local cluster from pinned upstream releases (root: it runs node agents and makes a bridge).
cluster: system-deps
	$(SUDO) python3 -m cluster up

cluster-down:
	$(SUDO) python3 -m cluster down

# Against KUBECONFIG when it is set, else the local cluster (started when it is not running).
e2e: system-deps install
	@if [ -z "$$KUBECONFIG" ]; then $(MAKE) --no-print-directory cluster; fi
	@KILN_E2E=1 KUBECONFIG="$${KUBECONFIG:-$(LOCAL_KUBECONFIG)}" PATH="$(KUBE_BIN):$(BUILDKIT_BIN):$$PATH" \
	  $(PYTEST) tests/e2e -p no:cacheprovider $(PYTEST_ARGS); $(NO_TESTS_IS_FAILURE)

# The current kube context when its API server answers; otherwise the local cluster.
run: install
	@if ! $(VENV)/bin/python -c 'import sys; from kiln.apply import cluster_problem; sys.exit(bool(cluster_problem()))'; then \
	  echo "make run: no reachable cluster; starting the local one (the first time builds it: about 20 minutes)" >&2; \
	  $(MAKE) --no-print-directory cluster && export KUBECONFIG=$(LOCAL_KUBECONFIG); fi; \
	PATH="$(KUBE_BIN):$$PATH" kubectl apply -k crds/ && $(VENV)/bin/kiln run $(KOPF_ARGS)

# The samples' Secrets are yours to create; the tests' fixture Secrets stand in for them here.
render: install
	$(VENV)/bin/kiln render -f manifests/samples/ -f tests/fixtures/secrets.yaml

deploy:
	kubectl apply -k manifests/

bench: system-deps install
	$(PY) -m pytest -q bench/ -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache
