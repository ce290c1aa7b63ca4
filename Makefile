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

demo: venv
	@mkdir -p $(DEMO)
	$(PVTRACE) ingest sample_traces/*.log.gz -o $(DEMO)/all --force
	@for f in sample_traces/*.log.gz; do \
	  n=$$(basename $$f .log.gz); \
	  echo; echo "== $$n: stock vs OBM designs"; \
	  $(PVTRACE) compare $$f --models stock,obm-pvc,obm,obm-rw,ideal || exit 1; \
	done

test: venv
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build
