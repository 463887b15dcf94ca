# vlmtune — every target sets up .venv first (idempotent: seconds when nothing changed).
#   make demo    the whole pipeline on the bundled tiny model and synthetic data
#   make test    the test suite (SLOW=1 adds the slow tests)
#   make ui      the MLflow dashboard on http://127.0.0.1:5000
#   make app     the optional web page's dependencies (vlmtune app RUN)
#   make deepspeed  DeepSpeed for strategy=deepspeed_zero2|3

PYTHON ?= python3
VENV ?= .venv
# The CPU wheel; a CUDA user sets e.g. TORCH_SPEC="torch==2.13.0 --index-url <their index>".
TORCH_SPEC ?= torch==2.13.0
PIP_FLAGS ?= -q --disable-pip-version-check
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
MLFLOW_URI ?= sqlite:///mlflow.db
# gpu tests skip themselves without CUDA; slow ones run with SLOW=1.
PYTEST_MARKERS := $(if $(SLOW),,-m "not slow")

.PHONY: setup app deepspeed demo test bench ui lint format clean

setup: $(STAMP)

# torch is installed first and explicitly, so no dependency can pull another build of it.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) $(TORCH_SPEC)
	$(BIN)/pip install $(PIP_FLAGS) -e ".[dev]"
	@touch $(STAMP)

# The app extra (Gradio) on top of setup; torch is already installed, so it stays as pinned.
APP_STAMP := $(VENV)/.app-stamp
app: $(APP_STAMP)
	@echo "installed; try a run: $(BIN)/vlmtune app outputs/<experiment>/<run>"

$(APP_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install $(PIP_FLAGS) -e ".[dev,app]"
	@touch $(APP_STAMP)

# DeepSpeed (strategy=deepspeed_zero2|3); the tests run it on the CPU. torch stays as pinned.
DS_STAMP := $(VENV)/.deepspeed-stamp
deepspeed: $(DS_STAMP)

$(DS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install $(PIP_FLAGS) -e ".[dev,deepspeed]"
	@touch $(DS_STAMP)

demo: setup
	$(BIN)/vlmtune run experiment=demo

# The cron round-trip test needs `crontab`: installed here when running as root with apt-get.
test: setup $(APP_STAMP) $(DS_STAMP)
	@command -v crontab >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get install -y -qq cron >/dev/null 2>&1 \
	       || { apt-get update -qq && apt-get install -y -qq cron >/dev/null; }; }; } \
	  || echo "crontab not installed: the cron schedule test will skip"
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	       && { apt-get install -y -qq chromium chromium-driver fonts-wqy-zenhei >/dev/null 2>&1 \
	            || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver \
	                 fonts-wqy-zenhei >/dev/null; }; }; } \
	  || echo "chromium not installed: the vlmtune app browser test will skip"
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_MARKERS) tests

bench: setup
	$(BIN)/python benchmarks/run.py

ui: setup
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_URI) --host 127.0.0.1 --port 5000

lint: setup
	$(BIN)/ruff check src tests benchmarks

format: setup
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf outputs multirun .cache mlflow.db mlartifacts .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
