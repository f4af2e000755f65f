# Two commands do all the set-up on a fresh machine:
#   make demo   build everything, convert a bundled Caffe2 net, run it in ONNX Runtime with the ai.caffe2 ops
#   make test   build everything and run the whole test suite
# Both create ./.venv (Python 3.9+ with venv and pip), install the package into it with its test
# dependencies, and build the native plugin (ONNX Runtime's headers are fetched on the first build).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: demo test install dev bench cuda clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	touch $@

install: $(VENV)/.created
	$(PIP) install -q ".[test]"

demo: install
	$(VENV)/bin/caffe2-ort run models/tiny_dropout_net/predict_net.pbtxt --value-info models/tiny_dropout_net/value_info.json

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/caffe2-ort bench

# Developer loop: incremental CMake build of the plugin into build/dev, copied into the source
# package, so `PYTHONPATH=python .venv/bin/python -m pytest` uses it without reinstalling.
dev: $(VENV)/.created
	$(PIP) install -q -e . --no-build-isolation 2>/dev/null || $(PIP) install -q scikit-build-core ninja onnx onnxruntime numpy protobuf pytest hypothesis onnxruntime-extensions
	cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DCAFFE2_ORT_DEV_COPY=ON >/dev/null
	cmake --build build/dev

clean:
	rm -rf build dist python/caffe2_ort/lib
