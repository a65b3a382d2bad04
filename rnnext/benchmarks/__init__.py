"""Benchmarks of rnnext against stock torch.nn, shared by `rnnext bench` and the scripts in benchmarks/."""
