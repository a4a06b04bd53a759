"""Architecture exploration: sweep specs, the batched cost model, search, Pareto fronts, Ray.

Modules: ``spec`` (sweep specs from TOML), ``evaluate`` (the cost model over arrays of designs
and its scalar reference), ``pareto``, ``search`` (pymoo NSGA-II, optuna), ``run`` (grids,
chunks, resume, Ray, outputs), ``plots``, ``cli``. numpy/pyarrow/plotly load only inside the
commands that need them.
"""
