# `make test` and `make demo` work on a fresh clone: they create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo lint venv clean

venv: $(STAMP)

$(STAMP): setup.cfg constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt mpich -e '.[test,mpi,triton]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check hpc_adept tests profiling
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q

demo: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash launch/demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check hpc_adept tests profiling

clean:
	rm -rf $(VENV) runs demo_data
