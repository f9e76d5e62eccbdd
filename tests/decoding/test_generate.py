"""hj.generate against the original's goldens, against recomputing the full forward, and its compile behaviour."""

import functools
import importlib

import jax
import numpy as np
import pytest

import huginn_jax as hj
from huginn_jax import config as config_lib

generate_module = importlib.import_module("huginn_jax.decoding.generate")

PROMPT = 8  # the goldens continue tokens[:, :8] by 12 greedy tokens from a zero state
NEW = 12

GOLDEN_CASES = {
    "gen_greedy_steps4": dict(num_steps=4),
    "gen_greedy_steps16": dict(num_steps=16),
    "gen_greedy_steps4_continuous": dict(num_steps=4, continuous=True),
    "gen_greedy_steps8_compress_s4": dict(num_steps=8, cache="compress-s4"),
    "gen_adaptive_kl": dict(num_steps=16, exit_criterion="kl", exit_threshold=5e-4),
    "gen_adaptive_latent_diff": dict(num_steps=16, exit_criterion="latent-diff", exit_threshold=0.05),
}


_jit_forward = jax.jit(hj.forward, static_argnames=("config", "num_steps", "init_scale"))  # one per shape and depth


def _generate(tiny_model, prompt, **kwargs):
  config, params = tiny_model
  kwargs.setdefault("max_new_tokens", NEW)
  return hj.generate(params, prompt, config=config, init_scale=0.0, **kwargs)


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_matches_golden(tiny_model, golden, name):
  expected = golden[name]
  out = _generate(tiny_model, golden["tokens"][:expected.shape[0], :PROMPT], **GOLDEN_CASES[name])
  np.testing.assert_array_equal(np.asarray(out.sequences), expected)
  np.testing.assert_array_equal(np.asarray(out.tokens), expected[:, PROMPT:])
  np.testing.assert_array_equal(np.asarray(out.num_generated), [NEW] * expected.shape[0])
  steps = golden.get(name + "_steps")
  if steps is not None:  # iterations used per generated token, the first one being the prompt's prefill
    np.testing.assert_array_equal(np.asarray(out.steps)[0], steps)
  elif "exit_criterion" not in GOLDEN_CASES[name]:
    assert (np.asarray(out.steps) == GOLDEN_CASES[name]["num_steps"]).all()


def test_speculative_matches_golden_and_greedy(tiny_model, golden):
  """Self-speculative decoding (4-iteration drafts of 3 tokens, verified with 16) reproduces the original's golden
  and, being greedy, the verifier's greedy tokens; the second row accepts differently and decodes independently."""
  out = _generate(tiny_model, golden["tokens"][:, :PROMPT], num_steps=16, draft_steps=4, lookahead=3)
  np.testing.assert_array_equal(np.asarray(out.sequences)[:1], golden["gen_speculative_draft4_verify16"])
  np.testing.assert_array_equal(np.asarray(out.sequences), golden["gen_greedy_steps16"])
  assert (np.asarray(out.steps) == 16).all()


def test_relaxed_verification(tiny_model, golden):
  """A draft passes when its verifier probability is at least a fraction of the top one: near 1 this is the greedy
  test, at 0 every draft passes (so 4-iteration drafts go through unchanged and the output differs)."""
  prompt = golden["tokens"][:, :PROMPT]
  kw = dict(num_steps=16, draft_steps=4, lookahead=3)
  strict = _generate(tiny_model, prompt, verification_threshold=0.999, **kw)
  np.testing.assert_array_equal(np.asarray(strict.sequences), golden["gen_greedy_steps16"])
  loose = _generate(tiny_model, prompt, verification_threshold=0.0, **kw)
  assert (np.asarray(loose.num_generated) == NEW).all()
  assert not np.array_equal(np.asarray(loose.sequences), golden["gen_greedy_steps16"])


def test_speculative_steps_are_the_verifiers_under_greedy_verification(tiny_model, golden):
  """Greedy verification keeps only the verifier's argmax tokens: each counts num_steps, and positions after a stop
  id count 0 as elsewhere."""
  prompt = golden["tokens"][:, :PROMPT]
  stop = int(golden["gen_greedy_steps16"][0, PROMPT + 4])  # the fifth new token of row 0 ends it
  # The settings and stop-id shape of the speculative golden test above: one compiled program for both.
  out = _generate(tiny_model, prompt, num_steps=16, draft_steps=4, lookahead=3, stop_ids=(stop, 65504, 65505))
  for row, n in enumerate(np.asarray(out.num_generated)):
    assert (np.asarray(out.steps)[row, :n] == 16).all() and (np.asarray(out.steps)[row, n:] == 0).all()
  assert int(out.num_generated[0]) <= 5 < NEW


def test_relaxed_accepted_drafts_report_draft_steps(tiny_model, golden):
  """With a relaxed threshold a draft the verifier would not have picked can pass: it is the draft's token and
  reports draft_steps; every other token is the verifier's argmax and reports num_steps. Which is which is
  recomputed here with the full forward at num_steps on the generated sequence."""
  config, params = tiny_model
  threshold, draft_steps = 0.1, 4  # the drafts of test_relaxed_verification: one compiled program for both
  out = _generate(tiny_model, golden["tokens"][:, :PROMPT], num_steps=16, draft_steps=draft_steps, lookahead=3,
                  verification_threshold=threshold)
  seq, steps = np.asarray(out.sequences), np.asarray(out.steps)
  assert (np.asarray(out.num_generated) == NEW).all()
  logits = _jit_forward(params, seq, config=config_lib.frozen(config), num_steps=16, init_scale=0.0).logits
  logits = np.asarray(logits, np.float64)
  logits = logits[:, PROMPT - 1:-1]  # the logits each new token was chosen from
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  chosen = np.take_along_axis(probs, seq[:, PROMPT:, None], axis=-1)[..., 0]
  verifier_pick = logits.argmax(-1) == seq[:, PROMPT:]
  assert verifier_pick.any() and (~verifier_pick).any()  # the case mixes both kinds
  assert (chosen[~verifier_pick] >= threshold * probs.max(-1)[~verifier_pick] * (1 - 1e-4)).all()
  np.testing.assert_array_equal(steps, np.where(verifier_pick, 16, draft_steps))


def _recompute_greedy(tiny_model, prompt, new_tokens, num_steps, width=None):
  """Greedy decoding by running the full forward from a zero state on the whole sequence for every token; the
  sequence is ``width`` wide if given (zeros after it: one compiled forward serves prompts of several lengths)."""
  config, params = tiny_model
  batch, length = prompt.shape
  seq = np.zeros((batch, max(width or 0, length + new_tokens)), np.int32)
  seq[:, :length] = prompt
  fwd = functools.partial(_jit_forward, config=config_lib.frozen(config), init_scale=0.0, num_steps=num_steps)
  for t in range(length, length + new_tokens):  # causal: the junk after position t does not change logits at t-1
    seq[:, t] = np.argmax(np.asarray(fwd(params, seq).logits[:, t - 1]), axis=-1)
  return seq[:, :length + new_tokens]


def test_cached_greedy_equals_recompute(tiny_model):
  prompt = np.random.default_rng(1).integers(0, 256, (2, PROMPT)).astype(np.int32)
  out = _generate(tiny_model, prompt, num_steps=4)
  np.testing.assert_array_equal(np.asarray(out.sequences), _recompute_greedy(tiny_model, prompt, NEW, 4))


def test_rows_of_different_lengths_decode_as_if_alone(tiny_model, golden):
  """A right-padded batch with per-row prompt lengths gives each row what recomputing it alone gives; a stop id
  ends its row (pad after it, 0 iterations), and stop ids are traced values (no recompilation)."""
  a, b = golden["tokens"][0, :PROMPT], golden["tokens"][1, :5]
  together = _generate(tiny_model, [a.tolist(), b.tolist()], num_steps=4)
  for row, prompt in enumerate((a, b)):
    expected = _recompute_greedy(tiny_model, prompt[None], NEW, 4, width=PROMPT + NEW)[0]
    np.testing.assert_array_equal(np.asarray(together.sequences)[row, :len(expected)], expected)
  np.testing.assert_array_equal(np.asarray(together.sequences)[1, 5 + NEW:], [hj.decoding.PAD_ID] * 3)

  before = generate_module.compiled_count()
  tokens = np.asarray(together.tokens)
  stop = int(tokens[0, 2])  # the third new token of row 0 becomes a stop id
  stopped = _generate(tiny_model, [a.tolist(), b.tolist()], num_steps=4, stop_ids=(stop, 65504, 65505))
  assert generate_module.compiled_count() == before
  for row in range(2):
    hits = np.flatnonzero(tokens[row] == stop)
    n = hits[0] + 1 if len(hits) else NEW
    assert int(stopped.num_generated[row]) == n
    np.testing.assert_array_equal(np.asarray(stopped.tokens)[row, :n], tokens[row, :n])
    assert (np.asarray(stopped.tokens)[row, n:] == hj.decoding.PAD_ID).all()
    assert (np.asarray(stopped.steps)[row, :n] == 4).all() and (np.asarray(stopped.steps)[row, n:] == 0).all()


def test_one_compilation_for_a_generation(tiny_model, golden):
  """A whole generation is one compiled program; a second one with the same shapes and static settings compiles
  nothing, whatever the token values, thresholds or key; and the program has no per-token Python loop (its size
  does not grow with max_new_tokens)."""
  config, params = tiny_model
  prompt = golden["tokens"][:, :PROMPT]
  run = lambda p, thr: hj.generate(params, p, config=config, max_new_tokens=NEW - 1, num_steps=3,  # noqa: E731
                                   init_scale=0.0, exit_criterion="latent-diff", exit_threshold=thr)
  compiles = []
  listener = lambda event, duration, **kw: compiles.append(event) if "backend_compile" in event else None  # noqa
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    before = generate_module.compiled_count()
    jax.block_until_ready(run(prompt, 0.05))
    assert len(compiles) == 1 and generate_module.compiled_count() == before + 1, compiles
    jax.block_until_ready(run(prompt[:, ::-1].copy(), 0.2))
    assert len(compiles) == 1 and generate_module.compiled_count() == before + 1, compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)

  spec_kwargs = dict(num_steps=3, init_scale=0.0, exit_criterion="latent-diff")

  def program_size(new_tokens):
    captured = {}
    real = generate_module._generate_jit
    generate_module._generate_jit = lambda *a, **k: captured.update(a=a, k=k)
    try:
      hj.generate(params, prompt, config=config, max_new_tokens=new_tokens, **spec_kwargs)
    finally:
      generate_module._generate_jit = real
    fn = functools.partial(generate_module._generate_impl, **captured["k"])
    text = str(jax.make_jaxpr(fn)(*captured["a"]))
    return text.count("dot_general"), text.count("while[")

  short, long = program_size(2), program_size(40)
  assert short == long and short[1] >= 2, (short, long)  # same matmuls; decode loop + core loops


def test_sampling_and_random_states_are_reproducible_and_keyed(tiny_model, golden):
  """Sampling with every filter, from random initial states (init_scale=1): the key decides the tokens."""
  config, params = tiny_model
  kw = dict(config=config, max_new_tokens=NEW, num_steps=2, init_scale=1.0, temperature=1.0, top_k=50, top_p=0.9,
            min_p=0.05, repetition_penalty=1.3)
  prompt = golden["tokens"][:, :PROMPT]
  a, b, c = (hj.generate(params, prompt, key=jax.random.key(k), **kw) for k in (0, 0, 1))
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
  assert ((np.asarray(a.tokens) >= 0) & (np.asarray(a.tokens) < 256)).all()


def test_bad_arguments_raise_clear_errors(tiny_model, golden):
  prompt = golden["tokens"][:, :PROMPT]
  with pytest.raises(ValueError, match="cache strategy"):
    _generate(tiny_model, prompt, cache="compress-x4")
  with pytest.raises(ValueError, match="exit_criterion"):
    _generate(tiny_model, prompt, exit_criterion="patience")
  with pytest.raises(ValueError, match="key"):
    hj.generate(tiny_model[1], prompt, config=tiny_model[0], max_new_tokens=2, init_scale=1.0)
  with pytest.raises(ValueError, match="max_seq_len"):
    _generate(tiny_model, prompt, max_new_tokens=1000)
  with pytest.raises(ValueError, match="vocabulary"):
    _generate(tiny_model, prompt + 300)
  with pytest.raises(ValueError, match="speculative"):
    _generate(tiny_model, prompt, draft_steps=2, continuous=True)


def test_dry_penalty_steers_greedy_decoding(tiny_model, golden):
  """Greedy decoding repeats itself (some new token continues a DRY match of length >= 2 in its context); with a
  large DRY multiplier no new token does, in plain and in speculative decoding (both keep each row's history)."""
  from tests.decoding.test_sampling import reference_dry
  prompt = golden["tokens"][:, :PROMPT]

  def repeats(out):
    found = 0
    for row in np.asarray(out.sequences):
      for i in range(PROMPT, PROMPT + NEW):
        found += reference_dry(row[:i].tolist(), 256)[row[i]] > 0
    return found

  assert repeats(_generate(tiny_model, prompt, num_steps=4)) > 0
  assert repeats(_generate(tiny_model, prompt, num_steps=4, dry_multiplier=1e4)) == 0
  assert repeats(_generate(tiny_model, prompt, num_steps=4, draft_steps=2, lookahead=3, dry_multiplier=1e4)) == 0
