"""Measurements: the one forward/backward pass, statistics, Jacobians and the linear algebra behind them."""
