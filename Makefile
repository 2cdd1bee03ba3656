# kiln: `make run` installs and starts the operator against the current kube context;
# `make test` installs everything the tests need and runs them.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests use: the CNCF distribution registry, QEMU for arm64 emulation.
DEBS := docker-registry qemu-user-static

.PHONY: install install-test system-deps test lint run render deploy e2e-kind bench clean

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

# pytest exits 5 when it collected no test: that is a failure here, never a pass.
test: system-deps install
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check operator tests bench
	$(PY) -m pytest -q tests/test_crd_schema.py -k "description or printer_column"

run: install
	kubectl apply -k crds/
	$(VENV)/bin/kiln run $(KOPF_ARGS)

# The samples' Secrets are yours to create; the tests' fixture Secrets stand in for them here.
render: install
	$(VENV)/bin/kiln render -f manifests/samples/ -f tests/fixtures/secrets.yaml

deploy:
	kubectl apply -k manifests/

e2e-kind:
	@command -v kind >/dev/null && command -v docker >/dev/null || { \
	  echo "make e2e-kind: needs docker and kind (none here); it would create a kind cluster with a local registry, deploy manifests/ and build every sample" >&2; exit 1; }
	@echo "make e2e-kind: not written yet" >&2; exit 1

bench: install
	$(PY) -m pytest -q bench/ -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache
