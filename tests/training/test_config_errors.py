"""Training config input: ``--set`` values of the wrong type and impossible learning rates are errors naming the
field."""

import pytest

from huginn_jax import cli
from huginn_jax.training import config as train_config
from training_setup import EXPERIMENT


@pytest.mark.parametrize("item, message", [
    ("train.steps=abc", "train.steps must be a int, got 'abc'"),
    ("train.steps=5.5", "train.steps must be a int, got 5.5"),
    ("train.optimizer.lr=fast", "train.optimizer.lr must be a float, got 'fast'"),
    ("train.data.train_files=data.parquet", "train.data.train_files is a tuple; write it as "),
])
def test_overrides_of_the_wrong_type(item, message, capsys):
  with pytest.raises(ValueError, match=message.replace("(", "\\(")):
    train_config.apply_overrides(train_config.load_experiment(EXPERIMENT), [item])
  assert cli.main(["train", "--config", EXPERIMENT, "--set", item]) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


@pytest.mark.parametrize("field, value, message", [
    ("lr", -1e-3, "train.optimizer.lr must be a positive number, got -0.001"),
    ("lr", 0.0, "train.optimizer.lr must be a positive number"),
    ("min_lr", -1.0, "train.optimizer.min_lr must be in \\[0, lr"),
])
def test_impossible_learning_rates(field, value, message):
  experiment = train_config.load_experiment(EXPERIMENT)
  experiment.train.optimizer[field] = value
  with pytest.raises(ValueError, match=message):
    train_config.validate(experiment.train, experiment.model)
