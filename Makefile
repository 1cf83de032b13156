# Two commands on a fresh machine: `make reproduce` (set up, run the main job) and `make test`.
.PHONY: setup reproduce report test

setup:
	@bash scripts/setup.sh

reproduce: setup
	.venv/bin/python -m reproduce.report

report: setup
	.venv/bin/python -m reproduce.report

test: setup
	.venv/bin/python -m pytest -q
