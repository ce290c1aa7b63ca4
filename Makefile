# Two commands do all setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PVTRACE := $(VENV)/bin/pvtrace
DEMO := build/demo

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The demo ingests each sample capture into its own bundle, then replays the two stock
# captures under every design (the synthetic kernels spun up to 10 us before blocking).
demo: venv
	@mkdir -p $(DEMO)
	@for f in sample_traces/*.log.gz; do \
	  n=$$(basename $$f .log.gz); \
	  echo; echo "== pvtrace ingest $$f"; \
	  $(PVTRACE) ingest $$f -o $(DEMO)/$$n --force || exit 1; \
	done
	@for n in buildkernel-stock-hash256 buildkernel-stock-superpage; do \
	  echo; echo "== pvtrace compare $(DEMO)/$$n --spin-limit 10000"; \
	  $(PVTRACE) compare $(DEMO)/$$n --spin-limit 10000 || exit 1; \
	done

test: venv
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build
