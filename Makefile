# Set-up and entry points. `make demo` and `make test` each do all set-up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow docs docs-check docs-screenshots lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m gpkern tour

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

# What a reader would see broken in the built site: missing methods, placeholders, raw math,
# empty navigation, guide pages without key parameters or pitfalls, duplicate titles, broken
# internal links, malformed external links and intersphinx inventories (offline), placeholder
# thumbnails.
docs-check: $(STAMP)
	$(PY) scripts/check_docs.py docs/_build/html

# Headless-Chromium screenshots of the built site in docs/_build/screenshots (needs chromium).
docs-screenshots:
	$(PY) scripts/docs_screenshots.py docs/_build/html

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) docs/_build docs/auto_examples docs/gen_modules docs/api/modules \
		docs/api/generated docs/benchmarks/generated
