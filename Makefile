# One-command set-up: `make demo` (main job) and `make test` (ruff + tests).
# The environment lives in .venv; torch is installed from the CPU build first so that pip never
# pulls a multi-GB CUDA build, then the project with its test and interop extras.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
EMOJI_FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf

.PHONY: env demo test lint data clean

env: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Fashion-MNIST and the Noto Color Emoji font (the `emoji` set) from Debian, and Debian's chromium +
# chromium-driver for the browser test of `ditlab serve` (tests/test_serve.py), as root; tests skip without them.
data:
	@if { [ ! -f $(FMNIST) ] || [ ! -f $(EMOJI_FONT) ] || ! command -v chromedriver >/dev/null; } \
		&& [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get update -q >/dev/null \
		&& apt-get install -y -q dataset-fashion-mnist fonts-noto-color-emoji chromium chromium-driver >/dev/null; fi

demo: env
	$(BIN)/ditlab demo --out ditlab-demo

lint: env
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: env data lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) ditlab-demo
