# Two commands do everything on a fresh Linux machine with Python 3.10+:
#   make demo   creates .venv if missing, installs the app extras, fetches the model weights when the Hub is
#               reachable (after printing their licences), starts the Gradio app on localhost
#   make test   creates .venv if missing, installs the dev extras, runs ruff and the whole test suite
# A second run reuses the venv; it reinstalls only when pyproject.toml changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
PORT   ?= 7860
MODEL  ?=

.PHONY: demo test lint venv clean-venv help chromium

help:
	@echo "make demo   - set up .venv and start the Gradio app on http://127.0.0.1:$(PORT)"
	@echo "make test   - set up .venv and run ruff + pytest (offline)"
	@echo "make lint   - ruff only"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10+ is needed; set PYTHON=/path/to/python3.x")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(BIN)/python

# mediapipe (the [face] extra) depends on opencv-contrib-python, a second package that installs `cv2` over our
# opencv-python-headless (and needs libGL). Keep exactly one: remove the contrib one and reinstall the headless one.
ONE_CV2 = if $(PIP) show -q opencv-contrib-python >/dev/null 2>&1; then \
	  v=$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opencv-python-headless"))') && \
	  $(PIP) uninstall -y -q opencv-contrib-python && \
	  $(PIP) install -q --progress-bar off --force-reinstall --no-deps "opencv-python-headless==$$v"; fi

# Stamps record which extras are installed; they are remade when pyproject.toml changes.
$(VENV)/.stamp-app: pyproject.toml | $(BIN)/python
	$(PIP) install --progress-bar off -e ".[app,face]"
	@$(ONE_CV2)
	touch $@

$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/python
	$(PIP) install --progress-bar off -e ".[dev]"
	@$(ONE_CV2)
	touch $@ $(VENV)/.stamp-app

demo: $(VENV)/.stamp-app
	$(BIN)/python app.py --download --port $(PORT) $(if $(MODEL),--model $(MODEL),)

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .

# The app's browser test drives Debian's headless Chromium through Playwright (never `playwright install`).
# Installed here when missing and when apt-get can run (root); otherwise that one test is skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
		echo "chromium is not installed (needs root and apt-get): the browser test will be skipped"

test: $(VENV)/.stamp-dev chromium
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
