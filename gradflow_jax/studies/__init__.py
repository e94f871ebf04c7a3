"""Studies over models: compare, depth and width studies, sweeps, training runs, experiments."""
