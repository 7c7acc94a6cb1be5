"""The parts of `mlvos profile` (imported together through mlvos.runtime.profiler):

- probes: stage timers, the timed runner proxy, host and device memory probes;
- measure: statistics, synthetic videos, predictor runs, read+decode timing, GMACs;
- sweeps: ProfileConfig and run_profile (resolution, object, memory and long-run sweeps);
- report: report.json and CSV files, text tables, compare;
- plots: the PNG plots.
"""
