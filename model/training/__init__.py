"""Training: the typed config, the reference solver, sampling, processes, resume and the run log."""
