"""Bad input to the API and to config files: an error naming the thing when it is known at call time; under
``jax.jit`` NaN (out-of-vocabulary ids and labels) or documented clamping (a negative traced step count)."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import huginn_jax as hj


@pytest.fixture(scope="module")
def model(tiny_model):
  return tiny_model


def test_labels_outside_the_vocabulary(model):
  config, params = model
  tokens = jnp.ones((1, 4), jnp.int32)
  for bad in (256, -5):
    labels = jnp.array([[1, 2, bad, -100]], jnp.int32)
    with pytest.raises(ValueError, match=f"label {bad} is out of the vocabulary \\[0, 256\\)"):
      hj.loss(params, tokens, labels, config=config, num_steps=1, init_scale=0.0)
    jitted = jax.jit(functools.partial(hj.loss, config=config, num_steps=1, init_scale=0.0))
    assert np.isnan(float(jitted(params, tokens, labels)))  # under jit: NaN, never a plausible number
  ok = jnp.array([[1, 2, 3, -100]], jnp.int32)
  jitted = jax.jit(functools.partial(hj.loss, config=config, num_steps=1, init_scale=0.0))
  assert np.isfinite(float(jitted(params, tokens, ok)))
  with pytest.raises(ValueError, match="labels must have the shape of token_ids"):
    hj.loss(params, tokens, ok[:, :3], config=config, num_steps=1, init_scale=0.0)


def test_token_ids_outside_the_vocabulary_under_jit_are_nan(model):
  config, params = model
  fwd = jax.jit(functools.partial(hj.forward, config=config, num_steps=1, init_scale=0.0))
  for bad in (300, 256, -5):
    logits = np.asarray(fwd(params, jnp.array([[1, 2, bad, 3], [1, 2, 3, 4]], jnp.int32)).logits)
    assert np.isnan(logits[0]).all() and np.isfinite(logits[1]).all()  # the sequence with the bad id only
    with pytest.raises(ValueError, match=f"token id {bad} is out of the vocabulary"):
      hj.forward(params, jnp.array([[1, bad]], jnp.int32), config=config, num_steps=1)


def test_negative_step_counts(model):
  config, params = model
  tokens = jnp.ones((1, 4), jnp.int32)
  for steps in (-1, jnp.int32(-1), np.int64(-2)):
    with pytest.raises(ValueError, match="num_steps must be >= 0"):
      hj.forward(params, tokens, config=config, num_steps=steps)
  fwd = jax.jit(lambda p, t, n: hj.forward(p, t, config=config, num_steps=n, init_scale=0.0).logits)
  np.testing.assert_array_equal(fwd(params, tokens, jnp.int32(-1)), fwd(params, tokens, jnp.int32(0)))  # clamped
  with pytest.raises(ValueError, match="num_steps must be a positive int \\(generation runs at least one"):
    hj.generate(params, np.ones((1, 4), np.int32), config=config, max_new_tokens=2, num_steps=0,
                key=jax.random.key(0))


def _hf_config(tmp_path, content):
  path = tmp_path / "config.json"
  path.write_text(content if isinstance(content, str) else json.dumps(content))
  return str(path)


def _tiny_hf(**changes):
  fields = hj.to_hf_config(hj.get_config("tiny"))
  fields.update(changes)
  return {k: v for k, v in fields.items() if v is not None}


@pytest.mark.parametrize("content, message", [
    ("{oops", "is not valid JSON"),
    ([1, 2], "must hold a JSON object of config fields, got a list"),
    (_tiny_hf(vocab_size=None, padded_vocab_size=None), "missing the required field 'padded_vocab_size'"),
    (_tiny_hf(intermediate_size=None), "missing the required field 'intermediate_size'"),
    (_tiny_hf(n_embd="sixty-four"), "field 'n_embd' must be an integer, got 'sixty-four'"),
    (_tiny_hf(n_embd=64.9), "field 'n_embd' must be an integer, got 64.9"),
    (_tiny_hf(rope_base="big"), "field 'rope_base' must be a number"),
])
def test_hf_config_errors_name_the_file_and_the_field(tmp_path, content, message):
  path = _hf_config(tmp_path, content)
  with pytest.raises(ValueError, match=f"{path}:? .*{message}"):
    hj.from_hf_config(path)
  assert hj.from_hf_config(_hf_config(tmp_path, _tiny_hf(n_embd=64.0))).d_model == 64  # 64.0 is an integer


def test_a_file_that_is_not_a_tokenizer(tmp_path):
  from huginn_jax.text.tokenizer import Tokenizer
  path = tmp_path / "tokenizer.json"
  path.write_text("not a tokenizer")
  with pytest.raises(ValueError, match=f"{path} is not an HF tokenizer.json"):
    Tokenizer.from_file(str(path))
  assert os.path.exists(path)
