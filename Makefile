# mtcp — `make fit` trains on the embedded procedural scenes, `make test` runs the tests.
# Both set up the project's virtual environment first (a no-op when it is up to date).

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
CONFIG  ?= configs/procedural.yaml
ARGS    ?=

# No network at run time: timm never reaches the hub, W&B never syncs unless asked.
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: help venv fit fit-mtcp test test-fast lint format bench sweep agent study clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# wandb's local sweep engine pins numpy<2 without needing it: install it beside numpy 2
	$(PY) -m pip install --quiet --no-deps 'sweeps==0.3.0'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install mtcp with its dev tools

fit: venv  ## train on the procedural scenes (CONFIG=..., ARGS=...), then report val metrics vs trivial predictors
	$(PY) -m mtcp fit --config $(CONFIG) $(ARGS)
	$(PY) -m mtcp validate --config $(CONFIG) $(ARGS) --ckpt_path runs/procedural/checkpoints/last.ckpt
	$(PY) benchmarks/trivial_baselines.py --config $(CONFIG) --metrics runs/procedural/validate_metrics.json

fit-mtcp: venv  ## MT-CP tiny with LPS on the procedural scenes (slower than the default: see the README), then validate
	$(PY) -m mtcp fit --config $(CONFIG) --config configs/model/mtcp_tiny.yaml --config configs/balancer/lps_nyud.yaml $(ARGS)
	$(PY) -m mtcp validate --config $(CONFIG) --config configs/model/mtcp_tiny.yaml --config configs/balancer/lps_nyud.yaml $(ARGS) --ckpt_path runs/procedural/checkpoints/last.ckpt
	$(PY) benchmarks/trivial_baselines.py --config $(CONFIG) --metrics runs/procedural/validate_metrics.json

test: venv  ## run the whole test suite (about 10-14 minutes on 2 cores)
	WANDB_MODE=disabled $(PY) -m pytest -q

test-fast: venv  ## the tests not marked slow
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow"

lint: venv  ## ruff
	$(PY) -m ruff check src tests benchmarks

format: venv  ## ruff format + fix imports
	$(PY) -m ruff check --fix --select I src tests benchmarks
	$(PY) -m ruff format src tests benchmarks

bench: venv  ## MT-CP tiny against the plain baseline, measured alternately in one run (ratios printed)
	$(PY) -m mtcp bench --config configs/procedural.yaml --compare configs/model/mtcp_tiny.yaml --height 120 --width 160 --batch_size 8 --warmup 2 --repeats 4

SWEEP ?= configs/sweeps/lps_procedural.yaml
sweep: venv  ## create a W&B sweep from SWEEP=configs/sweeps/....yaml (needs `wandb login`)
	WANDB_MODE=online $(VENV)/bin/wandb sweep $(SWEEP)

agent: venv  ## run a W&B sweep agent: make agent SWEEP_ID=entity/project/id
	@test -n "$(SWEEP_ID)" || (echo "usage: make agent SWEEP_ID=<entity>/<project>/<id>"; exit 2)
	WANDB_MODE=online $(VENV)/bin/wandb agent $(SWEEP_ID)

clean:  ## remove runs and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache

STUDY ?= configs/studies/paper_claims.yaml
study: venv  ## run a study (STUDY=configs/studies/....yaml, QUICK=1 for the CI-sized budget); resumes
	$(PY) -m mtcp.study $(STUDY) $(if $(QUICK),--quick,)
