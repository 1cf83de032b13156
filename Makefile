# Two commands on a fresh machine: `make reproduce` (set up, run the main job) and `make test`.
.PHONY: setup reproduce reproduce-all report test

setup:
	@bash scripts/setup.sh

# The main job (minutes from nothing): LaVIT Table 1 at mini scale (trains the mini chain on the CPU from the committed
# mini release, reuses finished runs in runs/), then the reproduction status of every paper table.
reproduce: setup
	.venv/bin/python reproduce/table1.py
	.venv/bin/python -m reproduce.report

# Every table: Table 1, the mini ablation tables on the same base runs (one more stage-2 run per ablated row and seed),
# Table 2 (text-to-image), Table 4 (stage-2 settings x seeds, MMLU forgetting), Table 5 (no training); VILA Table 2
# (corpus statistics, no training), Tables 6 and 5 (the mini VILA chain: trained once, text-only and VQA evaluations),
# Table 1 (nine more VILA stage runs: frozen-LLM / Transformer / linear-projector rows), Table 3 (six more: stage 1 on
# each corpus + its SFT), Table 4 (two visual-only SFT runs), Table 8 (the visual-expert stages 1 and 2), Table 9
# (a LoRA SFT run); the mini release's competence report, then the status.
reproduce-all: setup
	.venv/bin/python reproduce/table1.py
	.venv/bin/python reproduce/table2.py
	.venv/bin/python reproduce/table3.py
	.venv/bin/python reproduce/table4.py
	.venv/bin/python reproduce/table6.py
	.venv/bin/python reproduce/table7.py
	.venv/bin/python reproduce/table8.py
	.venv/bin/python reproduce/table5.py
	.venv/bin/python reproduce/vila_table2.py
	.venv/bin/python reproduce/vila_table6.py
	.venv/bin/python reproduce/vila_table5.py
	.venv/bin/python reproduce/vila_table1.py
	.venv/bin/python reproduce/vila_table3.py
	.venv/bin/python reproduce/vila_table4.py
	.venv/bin/python reproduce/vila_table8.py
	.venv/bin/python reproduce/vila_table9.py
	.venv/bin/python reproduce/vila_table11.py
	.venv/bin/python reproduce/vila_table7.py
	.venv/bin/python reproduce/mini_release.py
	.venv/bin/python -m reproduce.report

report: setup
	.venv/bin/python -m reproduce.report

test: setup
	.venv/bin/python -m pytest -q
