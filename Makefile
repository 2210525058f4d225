# Every target sets up .venv when it is missing (torch 2.14.1 / torchvision 0.29.1 come from the local disk here).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[book,test,search]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

.PHONY: venv demo test book run-quick run-cpu benchmark clean
venv: $(BIN)/.installed

demo: venv                ## MLP-4 vanilla vs NSR on MNIST, 1 epoch
	$(BIN)/nsr demo --epochs 1

test: venv                ## unit tests, notebook checks (nbval), book build + browser check
	$(BIN)/python -m pytest

book: venv                ## HTML book from the committed executed notebooks (_build/html)
	$(BIN)/nsr book

run-quick: venv           ## re-execute every notebook at the quick scale into book/
	$(BIN)/nsr run --config quick

run-cpu: venv             ## the CPU protocol (hours; resumable from results/cpu/)
	$(BIN)/nsr run --config cpu

benchmark: venv
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf _build
