# Two commands do all the set-up on a fresh machine:
#   make demo   build everything, convert a bundled Caffe2 net, run it in ONNX Runtime with the ai.caffe2 ops
#   make test   build everything and run the whole test suite
# Both create ./.venv (Python >= 3.9 with venv) and install the package and its test dependencies into
# it (pip builds the native plugin with CMake; ORT's headers are fetched on the first build). Where nvcc
# is found, `make test` also builds the CUDA plugin.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=
NVCC := $(shell command -v nvcc 2>/dev/null)

.PHONY: demo test install cuda bench compat dev clean fuzz

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	touch $@

install: $(VENV)/.created
	$(PIP) install -q ".[test,autodiff,plot]"

# The CUDA plugin (CPU + CUDA kernels in one library), built into build/cuda and installed next to the
# CPU one in the venv's caffe2_ort/lib (its RUNPATH finds the nvidia-cudnn-cu13 wheel from there).
cuda: install
	PYTHON=$(PY) bash scripts/build_cuda.sh --build-dir build/cuda
	$(PY) -c "import caffe2_ort, pathlib, shutil; d = pathlib.Path(caffe2_ort.__file__).parent / 'lib'; \
	shutil.copy('build/cuda/libcaffe2_ort_cuda.so', d); print('installed', d / 'libcaffe2_ort_cuda.so')"

demo: install
	$(VENV)/bin/caffe2-ort run models/tiny_dropout_net/predict_net.pbtxt --value-info models/tiny_dropout_net/value_info.json

test: install
ifneq ($(NVCC),)
	$(MAKE) cuda
else
	@echo "nvcc not found: skipping the CUDA build"
endif
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/caffe2-ort bench

# The oldest onnxruntime this project supports (1.17) runs the CPU op tests; 1.16 must get a clear error.
compat: install
	bash scripts/compat_check.sh $(PY)

# The fuzz stage at length (random cases, ~1500 per target; CAFFE2_ORT_FUZZ=ci is CI's bounded run).
fuzz: install
	CAFFE2_ORT_FUZZ=$${CAFFE2_ORT_FUZZ:-long} $(PY) -m pytest -q tests/fuzz

# Developer loop: incremental CMake build copied into python/caffe2_ort/lib; then
#   PYTHONPATH=python .venv/bin/python -m pytest
dev: $(VENV)/.created
	cmake -S . -B build/dev -DCMAKE_BUILD_TYPE=Release -DCAFFE2_ORT_DEV_COPY=ON
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
