# clip-vlm: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ROS_PKG := ros2_ws/src/clip_vlm
PYTEST_ARGS ?=

.PHONY: all venv demo test test-fast lint clean embedded-model

all: venv

# The venv is rebuilt when the project's dependency lists change.
# A first build needs about 7 GiB (torch's CUDA build is most of it): say so before pip fills the disk.
VENV_GIB := 7
$(STAMP): pyproject.toml $(wildcard $(ROS_PKG)/setup.py)
	@test -x $(BIN)/python || $(PYTHON) -c "import shutil, sys; free = shutil.disk_usage('.').free / 2**30; \
	sys.exit(free < $(VENV_GIB) and f'make: {free:.1f} GiB free on this disk; building $(VENV) needs about $(VENV_GIB) GiB. Free some and run make again.')"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ros]'
	@if [ -f $(ROS_PKG)/setup.py ]; then $(BIN)/python -m pip install --quiet -e $(ROS_PKG); fi
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m clip_vlm_core.demo

# The whole suite, end-to-end runs included (CI runs this).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything but the slow end-to-end runs, for the edit-test loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check clip_vlm_core tests $(ROS_PKG) launch

# Retrain the embedded default model from its recipe and seed (~35 min on 2 CPU cores) and install it: the
# recipe's 8,000 steps, then 1,500 more from their best checkpoint with the loss averaged over tokens again
# (captions weigh by their length) at a third of the learning rates, the same recipe otherwise.
POLISH = run_dir=runs/synthetic-tiny-polish optim.init=runs/synthetic-tiny/best optim.max_steps=1500 \
	optim.loss_weighting=token optim.lr_connector=1e-3 optim.lr_lora=7e-4
embedded-model: $(STAMP)
	rm -rf runs/synthetic-tiny runs/synthetic-tiny-polish
	$(BIN)/clip-vlm train --config training/configs/synthetic-tiny.yaml
	$(BIN)/clip-vlm train --config training/configs/synthetic-tiny.yaml $(POLISH)
	$(BIN)/python -m clip_vlm_core.model.embedded runs/synthetic-tiny-polish

clean:
	rm -rf $(VENV) .pytest_cache
