# The two commands a fresh machine needs: `make run` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
IOTENANT := $(VENV)/bin/iotenant
CLUSTER ?= iotenant

.PHONY: setup run test unit bench dev-up dev-down clean image kind-up kind-down

setup:
	@bash scripts/install-prerequisites.sh >/dev/null

## run: the operator against a local control plane with the example resources, until Ctrl-C
run: setup
	@$(PY) -m iotenant dev demo --name $(CLUSTER)

## test: the whole suite against real parts (local control plane, mosquitto, postgresql, promtool)
test: setup
	$(PY) -m pytest

## unit: the pure tier alone (renderers against golden manifests, status rules, judging, licences), no service
unit:
	@bash scripts/install-prerequisites.sh --python-only >/dev/null
	$(PY) -m pytest tests/unit -q

dev-up: setup
	@$(IOTENANT) dev up --name $(CLUSTER)

dev-down:
	@$(IOTENANT) dev down --name $(CLUSTER)

clean: dev-down
	rm -rf $(VENV)

## With Docker (not run in CI): the image, and a kind cluster running the chart and the examples.
# The reference the chart renders by default (image.repository, tag = the chart's appVersion), so the pods run the image kind loads.
IMAGE ?= ghcr.io/iotenant/iotenant:0.1.0
KIND_CLUSTER ?= iotenant
HELM = $(shell $(PY) -c 'from iotenant_testbed.binaries import ensure_binaries; print(ensure_binaries().path("helm"))')

image:
	docker build --tag $(IMAGE) .

kind-up: setup image
	kind get clusters | grep -qx $(KIND_CLUSTER) || kind create cluster --name $(KIND_CLUSTER) --wait 120s
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)
	$(HELM) upgrade --install iotenant charts/iotenant --namespace iotenant-system --create-namespace \
		--kube-context kind-$(KIND_CLUSTER) --wait --timeout 5m
	kubectl --context kind-$(KIND_CLUSTER) apply -f examples/monitoring/
	kubectl --context kind-$(KIND_CLUSTER) apply -f examples/customerinstance-starter.yaml -f examples/customerinstance-professional.yaml
	kubectl --context kind-$(KIND_CLUSTER) wait --for=condition=Ready cust --all --timeout=10m

kind-down:
	kind delete cluster --name $(KIND_CLUSTER)
