# The two commands of the README. Each bootstraps .venv (idempotent) first.
PY := .venv/bin/python

.PHONY: run test bootstrap lint docs bench clean-venv

bootstrap:
	@bash scripts/bootstrap.sh

## Short meta-training + held-out evaluation on the default (torch) backend.
run: bootstrap
	$(PY) -m meta_safe.meta_trainer $(ARGS)

## Full test suite (includes ruff check). Exit code 5 (no tests) counts as failure.
test: bootstrap
	$(PY) -m pytest $(ARGS)

lint: bootstrap
	$(PY) -m ruff check .

## API reference from the docstrings into build/api-site/ (strict: a broken reference fails).
docs: bootstrap
	$(PY) -m mkdocs build --strict

clean-venv:
	rm -rf .venv
