# clip-vlm: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# ROS 2 Jazzy's rclpy wheels, beside .venv's Kilted ones: `make test` runs the tests marked `ros` under both.
VENV_JAZZY := .venv-jazzy
JAZZY_BIN := $(VENV_JAZZY)/bin
JAZZY_STAMP := $(VENV_JAZZY)/.installed
ROS_PKG := ros2_ws/src/clip_vlm
PYTEST_ARGS ?=

# A ROS wheel's Python re-executes itself once with LD_LIBRARY_PATH naming its venv's ROS libraries and marks
# that done in this variable, which children inherit: a venv's Python started with it set would skip that
# and load the other venv's libraries. Each run here starts without it.
unexport _ROS_WHEELS_BOOTSTRAP_COMPLETE

.PHONY: all venv venv-jazzy demo test test-slow test-all test-jazzy test-fast lint clean embedded-model rehearse-gpu constraints

all: venv

# Say in one sentence that the disk is too full, before pip fills it: $(call check_disk,VENV,GIB).
check_disk = $(PYTHON) -c "import shutil, sys; free = shutil.disk_usage('.').free / 2**30; \
	sys.exit(free < $(2) and f'make: {free:.1f} GiB free on this disk; building $(1) needs about $(2) GiB. Free some and run make again.')"

# The venv is rebuilt when the project's dependency lists change.
# A first build needs about 7 GiB (torch's CUDA build is most of it).
# constraints.txt pins every package at the version the suite last passed with, so that a fresh .venv (CI's,
# a newcomer's) is that one: a release upstream cannot change a run (transformers 5.25 did, turning on hub
# kernels by default). pyproject.toml keeps the ranges the code supports; `make constraints` re-pins.
VENV_GIB := 7
CONSTRAINTS := constraints.txt
$(STAMP): pyproject.toml $(CONSTRAINTS) $(wildcard $(ROS_PKG)/setup.py)
	@test -x $(BIN)/python || $(call check_disk,$(VENV),$(VENV_GIB))
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,ros]'
	@if [ -f $(ROS_PKG)/setup.py ]; then $(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e $(ROS_PKG); fi
	@touch $(STAMP)

venv: $(STAMP)

# .venv-jazzy: Jazzy's ROS 2 wheels (pyproject's ros-jazzy extra) and links to .venv's other packages (torch,
# transformers, ...), so it takes ~0.2 GiB and ~20 s, not a second 7 GiB venv; scripts/share_site_packages.py
# says how, and tests/test_distros.py checks that nothing of Kilted's is found or loaded there. The two distros'
# wheels share package names, hence a venv of its own. Rebuilt whole whenever .venv is reinstalled.
VENV_JAZZY_GIB := 0.5
CONSTRAINTS_JAZZY := constraints-jazzy.txt
JAZZY_PIN := -c $(VENV_JAZZY)/shared-site.constraints.txt -c $(CONSTRAINTS_JAZZY)
$(JAZZY_STAMP): $(STAMP) scripts/share_site_packages.py $(CONSTRAINTS_JAZZY)
	@$(call check_disk,$(VENV_JAZZY),$(VENV_JAZZY_GIB))
	rm -rf $(VENV_JAZZY)
	$(BIN)/python -m venv --without-pip $(VENV_JAZZY)
	$(BIN)/python scripts/share_site_packages.py $(VENV) $(VENV_JAZZY)
	$(JAZZY_BIN)/python -m pip install --quiet $(JAZZY_PIN) -e '.[ros-jazzy]'
	@if [ -f $(ROS_PKG)/setup.py ]; then $(JAZZY_BIN)/python -m pip install --quiet $(JAZZY_PIN) -e $(ROS_PKG); fi
	@touch $(JAZZY_STAMP)

venv-jazzy: $(JAZZY_STAMP)

# Re-pin constraints.txt to what .venv holds: after `pip install -U` of a dependency there and a green
# `make test-all`. Written to a temporary file and renamed, so a failed freeze leaves the old pins.
# constraints-jazzy.txt does the same for .venv-jazzy (its Jazzy wheels; the shared packages as in .venv).
define freeze
	@{ echo "# Every package of $(1) at the version \`make test-all\` last passed with (see the Makefile)."; \
	   echo "# Written by \`make constraints\`; used as pip's -c when $(1) is built."; \
	   $(1)/bin/python -m pip freeze --exclude-editable | grep -v '^#'; } > $(2).tmp
	mv $(2).tmp $(2)
endef

constraints: $(STAMP) $(JAZZY_STAMP)
	$(call freeze,$(VENV),$(CONSTRAINTS))
	$(call freeze,$(VENV_JAZZY),$(CONSTRAINTS_JAZZY))

# SURROUND=1: six cameras captioned by embedded:surround (the demo reads SURROUND itself).
demo: $(STAMP)
	$(BIN)/python -m clip_vlm_core.demo

# The suite under ROS 2 Kilted (.venv), then its `ros` tests under Jazzy (.venv-jazzy), without the runs marked
# slow: every layer (model, data, training, bags, Ray, the node over DDS) in about 8 minutes. CI runs this and
# then test-slow. Both runs go on whatever the first gives, and make fails if either failed. Each run's first
# and last lines name its distro.
define run_both
	@status=0; \
	echo "$(BIN)/python -m pytest -m '$(1)' $(PYTEST_ARGS)"; $(BIN)/python -m pytest -m "$(1)" $(PYTEST_ARGS) || status=$$?; \
	echo "$(JAZZY_BIN)/python -m pytest -m 'ros and ($(1))' $(PYTEST_ARGS)"; \
	$(JAZZY_BIN)/python -m pytest -m "ros and ($(1))" $(PYTEST_ARGS) || status=$$?; \
	exit $$status
endef

test: $(STAMP) $(JAZZY_STAMP)
	$(call run_both,not slow)

# The end-to-end runs marked slow (floods, loads, the demo beside eight CPU-bound processes, Ray clusters),
# under both distros: about 15 minutes more.
test-slow: $(STAMP) $(JAZZY_STAMP)
	$(call run_both,slow)

# Everything, under both distros (test and test-slow in one pytest run each).
test-all: $(STAMP) $(JAZZY_STAMP)
	$(call run_both,slow or not slow)

# The `ros` tests under Jazzy alone, slow ones included (make test runs the others too), e.g.
# PYTEST_ARGS=tests/test_node.py.
test-jazzy: $(JAZZY_STAMP)
	$(JAZZY_BIN)/python -m pytest -m ros $(PYTEST_ARGS)

# Everything but the slow end-to-end runs, under Kilted only, for the edit-test loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check clip_vlm_core tests $(ROS_PKG) launch scripts

# Retrain both embedded models from their recipes and seed and install them (81 min measured end to end on 2
# CPU cores). The default model (~47 min): the recipe's 8,000 steps, then 1,500 more from their best checkpoint with the
# loss averaged over tokens again (captions weigh by their length) at a third of the learning rates, the same
# recipe otherwise. Then embedded:surround (six cameras, a 3-frame history; ~33 min with its data and encoder
# cache): its recipe's 2,500 steps, on the same base models (the same seed), installed beside it.
POLISH = run_dir=runs/synthetic-tiny-polish optim.init=runs/synthetic-tiny/best optim.max_steps=1500 \
	optim.loss_weighting=token optim.lr_connector=1e-3 optim.lr_lora=7e-4
embedded-model: $(STAMP)
	rm -rf runs/synthetic-tiny runs/synthetic-tiny-polish runs/synthetic-tiny-surround
	$(BIN)/clip-vlm train --config training/configs/synthetic-tiny.yaml
	$(BIN)/clip-vlm train --config training/configs/synthetic-tiny.yaml $(POLISH)
	$(BIN)/python -m clip_vlm_core.model.embedded runs/synthetic-tiny-polish
	$(BIN)/clip-vlm train --config training/configs/synthetic-tiny-surround.yaml
	$(BIN)/python -m clip_vlm_core.model.embedded --name surround runs/synthetic-tiny-surround

# One-off, not part of `make test`: scripts/bench-gpu.sh rehearsed on this CPU (tiny model) in a venv with the GPU
# machine's versions (torch 2.11, transformers 5.17, numpy 2, its other packages; ~5 GiB: PyPI's torch brings
# CUDA's libraries), with the wheels it lacks installed as they are there (scripts/fetch-gpu-wheels.sh).
REHEARSAL_VENV ?= .venv-gpu-rehearsal
GPU_MACHINE_PACKAGES := "torch==2.11.*" "torchvision==0.26.*" "transformers==5.17.*" "numpy>=2,<3" peft accelerate \
	opencv-python-headless timm pillow jinja2 pyyaml tqdm psutil safetensors tensorboard pytest pytest-timeout
rehearse-gpu:
	@test -x $(REHEARSAL_VENV)/bin/python || $(PYTHON) -m venv $(REHEARSAL_VENV)
	$(REHEARSAL_VENV)/bin/python -m pip install --quiet $(GPU_MACHINE_PACKAGES)
	scripts/fetch-gpu-wheels.sh
	PYTHON=$(REHEARSAL_VENV)/bin/python CLIP_VLM_WHEEL_SITE=$(abspath $(REHEARSAL_VENV))/carried \
		scripts/bench-gpu.sh --rehearse out/gpu-rehearsal   # its whole output: out/gpu-rehearsal/bench-gpu.log

clean:
	rm -rf $(VENV) $(VENV_JAZZY) $(REHEARSAL_VENV) .pytest_cache
