# The README's two commands: `make run` (set up, then run the pipeline on the toy world) and
# `make test` (set up if needed, then the whole test suite; this is what .ci/run executes).
VENV ?= .venv
PY := $(VENV)/bin/python
export NLTK_DATA := $(CURDIR)/.nltk_data
export NO_ALBUMENTATIONS_UPDATE := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1

.PHONY: setup run test test-fast bench ablation mutation clean

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/cocu run --config configs/toy.yaml

test: setup
	@bash scripts/test_services.sh
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The quick benchmarks (< 10 min on 2 cores) and their ratios; full sizes and the scale runs: benchmarks/RESULTS.md.
bench: setup
	@PY=$(PY) bash benchmarks/quick.sh

# The paper's Table 3 in miniature on the toy world: every arm x seed (configs/toy.yaml `ablation`), about an hour on
# 2 CPU cores; outputs in runs/toy/ablation/ (table.md, loss_curves.png, maps/, report.md).
ablation: setup
	$(VENV)/bin/cocu ablation --config configs/toy.yaml

# Mutation testing of the core numeric modules (curation ranking and sampling, evaluation metrics and segmentation,
# training losses and optimiser schedule) against their fast tests, on a copy of the tree; not part of CI.
# Needs mutmut 2 (`pip install -e '.[mutation]'`); results and surviving mutants' diffs in runs/mutation/.
mutation: setup
	@$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install -q "mutmut>=2.4,<3"
	@PY=$(abspath $(PY)) bash scripts/mutation.sh runs/mutation

clean:
	rm -rf runs .pytest_cache
