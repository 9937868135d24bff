# The two commands a fresh machine needs: `make run` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
IOTENANT := $(VENV)/bin/iotenant
CLUSTER ?= iotenant

.PHONY: setup run test bench dev-up dev-down clean

setup:
	@bash scripts/install-prerequisites.sh >/dev/null

## run: the operator against a local control plane with the example resources, until Ctrl-C
run: setup
	@$(PY) -m iotenant dev demo --name $(CLUSTER)

## test: the whole suite against real parts (local control plane, mosquitto, postgresql, promtool)
test: setup
	$(PY) -m pytest

dev-up: setup
	@$(IOTENANT) dev up --name $(CLUSTER)

dev-down:
	@$(IOTENANT) dev down --name $(CLUSTER)

clean: dev-down
	rm -rf $(VENV)
