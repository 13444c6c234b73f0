# Set-up and checks. `make demo` / `make test` work on a fresh machine: they create .venv first.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Debian packages the tests and the demo use: ffmpeg decodes what libsndfile cannot; the rest are
# the demo's real audio (TTS voices, sampled GM soundfonts, recorded voice packs); see
# ssamba/demo/sources.py. The optional ones only add variety to the demo's pretraining mix.
APT_PACKAGES := ffmpeg espeak-ng flite fluid-soundfont-gm timgm6mb-soundfont hedgewars-data
APT_OPTIONAL := festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
	sound-theme-freedesktop alsa-utils frozen-bubble-data lincity-ng-data

.PHONY: venv dev-venv system-deps demo-deps apt-install test lint format demo clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[plot]"
	# tinysoundfont renders the demo's instrument notes; --no-deps: its optional pyaudio does not build
	$(PIP) install -q --no-deps tinysoundfont
	touch $@

# What the tests and the linters add (triton's interpreter, onnxruntime, trackers, ...): the demo
# does not wait for them.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev,plot]"
	touch $@

venv: $(VENV)/.installed

dev-venv: $(VENV)/.installed-dev

system-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(APT_PACKAGES)"

demo-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(APT_PACKAGES) $(APT_OPTIONAL)"

apt-install:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "warning: could not install$$missing; tests that need them are skipped"; \
	  else echo "Debian packages missing; run: sudo apt-get install -y$$missing"; fi; \
	fi

lint: dev-venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: dev-venv
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

# One torch thread per test: the suite is many small operations, where two OpenMP threads mostly
# wait on each other (on a loaded 2-core machine the demo test took 12+ minutes instead of one);
# the tests of threaded code set their thread counts themselves.
test: dev-venv system-deps lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

demo: venv demo-deps
	$(VENV)/bin/ssamba demo --out demo_out

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
