# Two commands do all the set-up on a fresh machine:
#   make demo   build everything, convert a bundled Caffe2 net, run it in ONNX Runtime with the ai.caffe2 ops
#   make test   build everything and run the whole test suite
# Both create ./.venv (Python >= 3.9 with venv) and pip-install the package with its test dependencies
# into it; pip builds the native plugin with CMake (ORT's headers are fetched into the user cache on the
# first build). Where nvcc is found, that same pip install also builds the CUDA plugin into the wheel.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=
NVCC := $(shell command -v nvcc 2>/dev/null)
GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
comma := ,
# onnxruntime comes from [gpu] (onnxruntime-gpu, CUDA 13) on a machine with a GPU, else from [cpu]; never
# both. Where nvcc builds the CUDA plugin without a GPU, [cudnn] lets it load for the checks that need no GPU.
ORT_EXTRAS ?= $(if $(GPU),gpu,cpu$(if $(NVCC),$(comma)cudnn))
# What `make install` puts in the venv: the tests, their autodiff oracle (torch 2.13 CPU), plotting, a runtime.
EXTRAS = test,autodiff,plot,$(ORT_EXTRAS)

.PHONY: demo test install cuda bench compat dev clean fuzz

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	touch $@

install: $(VENV)/.created
	$(PIP) install -q ".[$(EXTRAS)]"

# The CUDA plugin is part of `make install` where nvcc is found; this forces it (fails without nvcc).
cuda: $(VENV)/.created
	$(PIP) install -q ".[$(EXTRAS)]" -C caffe2-ort.cuda=on

demo: install
	$(VENV)/bin/caffe2-ort run models/tiny_dropout_net/predict_net.pbtxt --value-info models/tiny_dropout_net/value_info.json

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/caffe2-ort bench

# The whole CPU op suite on onnxruntime 1.17.x, a middle release and the newest; 1.16 must be refused.
compat: $(VENV)/.created
	$(PY) scripts/compat.py --python $(PY)

# The fuzz stage at length (random cases, ~1500 per target; CAFFE2_ORT_FUZZ=ci is CI's bounded run).
fuzz: install
	CAFFE2_ORT_FUZZ=$${CAFFE2_ORT_FUZZ:-long} $(PY) -m pytest -q tests/fuzz

# Developer loop: incremental CMake build copied into python/caffe2_ort/lib; then
#   PYTHONPATH=python .venv/bin/python -m pytest
dev: $(VENV)/.created
	cmake -S . -B build/dev -DCMAKE_BUILD_TYPE=Release -DCAFFE2_ORT_DEV_COPY=ON -DPython3_EXECUTABLE=$(abspath $(PY))
	cmake --build build/dev -j2

clean:
	rm -rf build dist python/caffe2_ort/lib

# --- parity stage (tests/parity): real Caffe2 as the oracle -------------------------------------
# Builds (once) the cached Python 3.9 venv holding PyPI torch 1.8.1's caffe2.python (~800 MB download;
# scripts/caffe2_venv.sh, outside the tree: $CAFFE2_VENV, default ~/.cache/caffe2-ort/caffe2-py39),
# then runs the suite the default `make test` leaves out (pytest marker `parity`).
.PHONY: parity
parity: install
	bash scripts/caffe2_venv.sh
	$(PY) -m pytest -m parity tests/parity $(PYTEST_ARGS)
