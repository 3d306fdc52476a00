# Defocus deblurring: train -> export -> engine -> runtime -> benchmarks.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.runtime
# The CPU wheel of torch that lies on this machine's disk; installed before the
# project so pip never pulls a multi-GB CUDA build here.
TORCH ?= torch==2.13.0
CKPT ?= models/default
CONFIG ?= configs/small.toml

.PHONY: install test typecheck lint cpp demo data train train-continue train-tiny train-gpu export engine verify-engine bench bench-gpu serve clean

# Two install levels: the runtime alone (numpy, OpenCV, onnxruntime, OpenVINO, tqdm: what `make
# demo` needs) and everything (training, export, tests), which `make test` adds on top.
$(RUNTIME_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	@echo "runtime installed in $(VENV): $$(du -sh $(VENV) | cut -f1)"
	touch $@

$(STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[train,dev,serve]'
	# tensorrt-stubs declares a dependency on tensorrt, which cannot install here.
	$(PY) -m pip install -q --no-deps 'tensorrt-stubs==10.13.0.35.1'
	# The tritonserver binary for the serving tests (pyproject.toml [serve] says why --no-deps).
	$(PY) -m pip install -q --no-deps 'nvidia-pytriton==0.7.0'
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q
	$(MAKE) typecheck
	$(MAKE) lint

typecheck: $(STAMP)
	# mypy over runtime/, export/ and tools/ against the TensorRT 10.13 API stubs
	# (tools/typecheck.py explains the patching).
	$(PY) -m tools.typecheck runtime export tools

# Ruff: pycodestyle, pyflakes and import order, and the code formatted to one line length
# (pyproject.toml [tool.ruff]). `ruff format . && ruff check --fix .` repairs most of it.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The C++ runtime (cpp/README.md): fetches its headers from Debian into build/deps,
# builds libdeblur.so and deblur_cpp into build/cpp. tests/test_cpp.py runs the same.
cpp: $(RUNTIME_STAMP)
	bash cpp/build.sh build/cpp $(PY)

demo: $(RUNTIME_STAMP)
	$(PY) -m runtime.infer samples/*.png --output-dir out/demo --save-defocus-map --save-comparison

# The photo corpus from Debian's packages (apt-get download + dpkg -x, nothing
# installed), curated into data/corpus/{train,holdout}; resumable. Report: data/corpus/report.md.
data: $(STAMP)
	$(PY) -m training.data.corpus --root data/corpus

train: $(STAMP)
	$(PY) -m training.train --config $(CONFIG)

# Keep improving the default model on this machine (run 16 took 72 minutes on 2 cores in bf16; rerun
# to resume). runs/continue/best/ is the best validation checkpoint so far:
# `make export CKPT=runs/continue/best` turns it into a bundle.
train-continue: data
	$(PY) -m training.train --config configs/small_continue.toml --init models/default --out runs/continue

train-tiny: $(STAMP)
	$(PY) -m training.train --config configs/tiny.toml

train-gpu:
	bash training/train_gpu.sh runs/gpu

export: $(STAMP)
	$(PY) -m export.onnx --checkpoint $(CKPT) --out $(CKPT)

engine: $(STAMP)
	$(PY) -m export.engine --bundle $(CKPT)

verify-engine: $(STAMP)
	$(PY) -m export.verify --bundle $(CKPT)

# The bundle as a Triton model repository in out/triton, served on 127.0.0.1:8000 (HTTP) and
# :8001 (gRPC) by the tritonserver of nvidia-pytriton; Ctrl-C stops it.
serve: $(STAMP)
	$(PY) -m export.triton --bundle $(CKPT) --out out/triton --force
	$(PY) -m export.triton_server --repo out/triton

bench: $(STAMP)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.overhead

bench-gpu:
	bash benchmarks/gpu.sh

clean:
	rm -rf $(VENV) out runs
