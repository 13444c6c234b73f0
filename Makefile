# Set-up and checks. `make demo` / `make test` work on a fresh machine: they create .venv first.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Debian packages the tests use (ffmpeg: decoding formats libsndfile lacks).
APT_PACKAGES := ffmpeg

.PHONY: venv dev system-deps test lint format demo clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev,plot]"
	touch $@

venv: $(VENV)/.installed

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "warning: could not install$$missing; tests that need them are skipped"; \
	  else echo "Debian packages missing; run: sudo apt-get install -y$$missing"; fi; \
	fi

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: venv
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

test: venv system-deps lint
	$(PY) -m pytest -q

demo: venv
	@echo "The end-to-end demo is not built yet (see README: what exists today)."
	$(VENV)/bin/ssamba --help

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
