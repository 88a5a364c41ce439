# Conveniences over scripts/ (which hold the real commands).
.PHONY: bench bench-quick test serve

# Every benchmark, one table of ratios into bench/results/summary.md and the README (tens of minutes).
bench:
	scripts/bench --readme

# The same, short runs: a few minutes on 2 cores.
bench-quick:
	scripts/bench --quick --readme

test:
	scripts/test

serve:
	scripts/serve
