"""Training: the recurrence sampler, the optimizer, the sharded train step and the loop.

``from huginn_jax.training import train, get_train_config`` (loaded lazily: importing the package stays cheap).
"""

_LAZY = {"train": "loop", "TrainResult": "loop", "get_train_config": "config", "load_experiment": "config"}


def __getattr__(name):
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(f"huginn_jax.training.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'huginn_jax.training' has no attribute {name!r}")
