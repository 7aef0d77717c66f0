"""Training: the typed config, processes, sampling, the solver, exact resume, the run log,
the step loop, and ``train()`` that puts them together in that order."""
