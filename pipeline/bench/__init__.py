"""`splice bench SPEC.toml`: a whole comparison table from one file (docs/bench.md).

- schema.py: the spec's keys and what a parsed spec is; spec.py: reading and checking a spec file (TOML), with
  one-line errors naming the key;
- plan.py: what the spec asks for, against what the run folders already hold (read only: nothing is written);
- cost.py: the estimate of a plan (GPU-hours, wall time, with a range), from the measured table step_costs.toml or a
  short calibration on the device;
- execute.py: running the plan (manifests, runs or imports, evaluations, one report, bench.json).

The run folders' own rules decide what is done (fingerprints, locks, `_SUCCESS`, eval/metrics.parquet): the bench
keeps no bookkeeping of its own besides the record of what it last did (bench.json).
"""
