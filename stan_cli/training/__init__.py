"""The parts of `stan train`; `stan_cli.train` is the loop and the API (see its docstring)."""
