# Two commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The compatibility pass: a second environment with the newest releases of the libraries whose
# behaviour geoloc depends on most (torch stays the pinned CPU build; everything else as pinned).
NEWEST := .venv-newest
NEWEST_BIN := $(NEWEST)/bin
NEWEST_LIBS := transformers peft accelerate tokenizers
UNPINNED := transformers|peft|accelerate|tokenizers|huggingface_hub|safetensors
# What the compatibility pass runs: everything that touches a model, and the real-file tests.
COMPAT_TESTS := tests/encoder tests/train tests/eval tests/index tests/test_real_models_cli.py tests/test_versions.py
# torch.compile's tracing takes most of a minute a family: each pass traces one of the two.
COMPILE_TEST := tests/train/test_trainer_compile.py::test_compiled_steps_give_eager_losses
MAIN_SKIP := --deselect '$(COMPILE_TEST)[tiny-internvl]'
COMPAT_SKIP := --deselect '$(COMPILE_TEST)[tiny-smolvlm]'

.PHONY: demo test lint clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first (it lies on this machine's disk); an unpinned torch would pull
	# a multi-GB CUDA build. Never torchvision: see docs/backbones.md.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

$(NEWEST_BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(NEWEST)
	$(NEWEST_BIN)/pip install --quiet --upgrade pip
	$(NEWEST_BIN)/pip install --quiet torch==2.13.0
	grep -v -E '^($(UNPINNED))==' constraints.txt > $(NEWEST)/others.txt
	$(NEWEST_BIN)/pip install --quiet -c $(NEWEST)/others.txt -e ".[dev]"
	$(NEWEST_BIN)/pip install --quiet -c $(NEWEST)/others.txt --upgrade $(NEWEST_LIBS)
	touch $@

demo: $(BIN)/.installed
	$(BIN)/geoloc demo

# The two passes run side by side, one torch thread each: on 2 cores that takes about as long
# as the longer one alone (two 2-thread processes would oversubscribe the cores).
test: $(BIN)/.installed $(NEWEST_BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ty check  # src/geoloc, configured in pyproject.toml; about 2 s
	@echo "compatibility pass, on the newest releases:" \
	  $$($(NEWEST_BIN)/pip list --format=freeze 2>/dev/null | grep -i -E '^($(UNPINNED))==' | tr '\n' ' ')
	@OMP_NUM_THREADS=1 $(NEWEST_BIN)/pytest -p no:cacheprovider --basetemp=$(NEWEST)/pytest-tmp --durations=15 $(COMPAT_TESTS) $(COMPAT_SKIP) > $(NEWEST)/pytest.log 2>&1 & \
	compat=$$!; \
	OMP_NUM_THREADS=1 $(BIN)/pytest --durations=15 $(MAIN_SKIP); main=$$?; \
	wait $$compat; newest=$$?; \
	echo "== compatibility pass ($(NEWEST)/pytest.log) =="; cat $(NEWEST)/pytest.log; \
	test $$main = 0 && test $$newest = 0

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ty check

clean:
	rm -rf $(VENV) $(NEWEST) demo_out runs
