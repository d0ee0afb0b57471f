# Two commands for a newcomer (see README): `make run` and `make test`.
# Each creates .venv with the pinned dependencies (constraints.txt) on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# Tests and local runs never talk to Google: no metadata server probing.
export NO_GCE_CHECK = True

.PHONY: run test bench docs schemas sample clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.py constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,aws,azure]'
	$(BIN)/python -m tests.install_duckdb_spatial
	touch $@

# Azurite, the Azure Blob Storage emulator the tests start (npm; 3.35 is the last
# release that runs on Node 20), installed into the repository, not globally
AZURITE_VERSION ?= 3.35.0
AZURITE = .azurite/node_modules/.bin/azurite-blob
$(AZURITE):
	npm install --prefix .azurite --no-save --no-audit --no-fund --loglevel=error \
		azurite@$(AZURITE_VERSION)
	touch $@

run: $(VENV)/.installed          ## run the pipeline on the bundled sample -> ./output
	$(BIN)/python -m pipelines.currents_to_partners $(ARGS)

test: $(VENV)/.installed $(AZURITE)  ## run the whole test suite
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

EVENTS ?= 500000
bench: $(VENV)/.installed        ## benchmark (README "Performance"): EVENTS=500000 by default
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python -m bench.run --events $(EVENTS) $(ARGS)

docs: $(VENV)/.installed         ## API reference from the docstrings -> docs/api/
	$(BIN)/python -m pdoc -o docs/api transforms pipelines schemas

schemas: $(VENV)/.installed      ## regenerate schemas/ from ../shared/seeds
	$(BIN)/python -m schemas.build_from_seeds

sample: $(VENV)/.installed       ## regenerate the bundled sample export
	$(BIN)/python -m pipelines.make_sample

clean:
	rm -rf $(VENV) output build *.egg-info .pytest_cache .azurite
