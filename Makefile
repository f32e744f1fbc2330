# Two commands after `git clone`:  `make demo` (set up + main job)  and  `make test`.
# Everything lives in a local virtual environment (.venv); nothing is installed system-wide.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# faiss flavour: cpu (faiss-cpu) or gpu (faiss-gpu, CUDA 12). They ship the same module: never both.
FAISS ?= cpu
# torch is installed first and pinned, so pip never swaps in a different build later.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: setup demo test clean

$(VENV)/.installed-$(FAISS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(FAISS),test]" "$(TORCH_SPEC)"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(VENV)/.installed-$(FAISS)

# The main job, on the built-in synthetic data: train with MIPS-s (instruments on) and summarise
# the run, then execute two notebooks headless and export them to HTML (open them in a browser).
DEMO_ARGS ?= --data synthetic:eurlex-like --model mlp --sampler mips-s --warmup-epochs 1 --epochs 8
DEMO_NOTEBOOKS ?= gradient_dominance rank_histograms
demo: setup
	$(VENV)/bin/xmcviz train $(DEMO_ARGS) --out $(DEMO_OUT) --overwrite
	$(VENV)/bin/xmcviz inspect $(DEMO_OUT)
	for nb in $(DEMO_NOTEBOOKS); do \
	  $(VENV)/bin/papermill notebooks/$$nb.ipynb $(abspath $(DEMO_OUT))/$$nb.ipynb -k python3 \
	    --cwd notebooks -p output_dir $(abspath $(DEMO_OUT))/$$nb --no-progress-bar && \
	  $(VENV)/bin/jupyter nbconvert --to html --log-level WARN $(abspath $(DEMO_OUT))/$$nb.ipynb \
	    || exit 1; \
	done
	@echo "demo: run in $(DEMO_OUT)/, notebooks as $(DEMO_OUT)/*.html"

test: setup
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) runs
