"""The errors a training run ends with that are not bad input (importable without JAX, for the command line)."""


class WorkdirLocked(RuntimeError):
  """Another live run holds the workdir."""


class TrainingDiverged(RuntimeError):
  """The run stopped because its loss or gradients are no longer finite."""


class TrainingStopped(RuntimeError):
  """The run ended before its last step because its ``stop`` event was set: another run beside it failed or the
  user interrupted."""
