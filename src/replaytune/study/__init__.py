"""The study layer: the paper's controlled experiment as sweeps, and what is computed from their records.

* :mod:`~replaytune.study.sweep` - many runs: a grid, prefix sharing, executors (in-process,
  local processes) and :mod:`~replaytune.study.sweep.ray` (Ray);
* :mod:`~replaytune.study.runs` - the paper's runs (fine-tuning, mid-training, references) as a sweep;
* :mod:`~replaytune.study.efficiency` - reference fits, effective data, multipliers, intervals;
* :mod:`~replaytune.study.results`, :mod:`~replaytune.study.report`, :mod:`~replaytune.study.plots` -
  results.json, report.md and plots, rebuilt from run records only;
* :mod:`~replaytune.study.demo` - the main job: the study at CPU scale on text found on the machine.

It stands on the core (config, data, schedule, train) and never imports the fine-tuning layer.
"""
