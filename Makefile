# Quick start: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# Sleeping OpenMP threads keep torch from fighting faiss and the image loaders for 2 cores (ImageNet path).
# The VQA models run thousands of small ops per step and are 2x slower that way: demo-vqa leaves it unset.
demo test bench: export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo demo-vqa demo-avalanche test bench backbones figure clean-results gpu-check-smoke

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip >/dev/null
	$(VENV)/bin/python -m pip install -r requirements.txt
	$(VENV)/bin/python -m pip install --no-deps -e .
	# the optional Avalanche extra (avalanche-lib 0.6.0): its strategy's tests are part of the suite
	$(VENV)/bin/python -m pip install -e '.[avalanche]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m image_classification_experiments.digits_demo --out results/demo

demo-vqa: $(STAMP)
	$(VENV)/bin/python -m vqa_experiments.vqa_demo --out results/demo-vqa --data data/demo-vqa

demo-avalanche: $(STAMP)
	$(VENV)/bin/python examples/avalanche_digits.py --out results/avalanche_digits.json --threads 1

backbones: $(STAMP)
	$(VENV)/bin/python benchmarks/backbones_digits.py --out results/backbones

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_stream.py --json results/bench_$$(date +%Y%m%d).json

gpu-check-smoke: $(STAMP)
	OUT=$${OUT:-results/gpu_check_smoke} bash benchmarks/gpu_check.sh --smoke

figure: $(STAMP)
	$(VENV)/bin/python repo_images/draw_pipeline.py

clean-results:
	rm -rf results/demo data/digits results/demo-vqa data/demo-vqa
