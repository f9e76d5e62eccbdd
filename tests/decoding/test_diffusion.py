"""The diffusion-style sampler against the original's goldens, batched against single rows, and its counters."""

import os

import jax
import numpy as np
import pytest

import huginn_jax as hj

PROMPT = 8
# The fixture's notes say max_new_tokens=16, but the original's loop bound comes from max_length when
# max_new_tokens is not a keyword of the call: HF's default max_length 20 minus the 8 prompt tokens = 12. Every
# golden length (20 to 26) is what that bound gives (a freeze may overshoot it), and 16 does not reproduce them.
NEW = 12

GOLDEN_CASES = {
    "diffusion_default_steps8": dict(),
    "diffusion_noema_nomix_steps8": dict(ema_embeds=0.0, state_noise_mixing=0.0),
    "diffusion_inner2_exit0.1_steps8": dict(inner_recurrence=2, exit_t=0.1),
    "diffusion_wavefront3_steps8": dict(max_wavefront=3),
    "diffusion_noprefill_steps8": dict(full_prefill=False),
}


@pytest.fixture(scope="module")
def golden_diffusion(tiny_dir):
  with np.load(os.path.join(tiny_dir, "golden_diffusion.npz")) as g:
    return {k: g[k] for k in g.files}


def _diffusion(tiny_model, prompt, **kwargs):
  config, params = tiny_model
  kwargs.setdefault("max_new_tokens", NEW)
  kwargs.setdefault("cache", "latest-m4")
  return hj.generate_diffusion(params, prompt, config=config, num_steps=8, init_scale=0.0, **kwargs)


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_matches_golden(tiny_model, golden, golden_diffusion, name):
  expected = golden_diffusion[name][0]
  out = _diffusion(tiny_model, golden["tokens"][:1, :PROMPT], **GOLDEN_CASES[name])
  n = int(out.lengths[0])
  assert n == expected.shape[0]
  np.testing.assert_array_equal(np.asarray(out.sequences)[0, :n], expected)
  assert (np.asarray(out.sequences)[0, n:] == hj.decoding.PAD_ID).all()
  passes, rounds = int(out.core_forward_passes[0]), int(out.rounds[0])
  inner = GOLDEN_CASES[name].get("inner_recurrence", 4)
  prefill = GOLDEN_CASES[name].get("full_prefill", True)
  assert passes == int(prefill) + inner * rounds  # one pass for the prefill, inner_recurrence per round
  assert int(out.tokens_forwarded[0]) >= (PROMPT if prefill else 0) + inner * rounds
  assert (int(out.standing_waves[0]) > 0) == (name == "diffusion_wavefront3_steps8")


def test_batched_rows_equal_single_runs(tiny_model, golden):
  """Two prompts of different lengths decode side by side (right-padded), each row freezing on its own schedule,
  and each equals the same prompt decoded alone, counters included. (The settings of the golden wavefront3 case:
  the first row alone reuses its compiled program.)"""
  prompts = [golden["tokens"][0, :PROMPT], golden["tokens"][1, :PROMPT - 2]]
  kw = GOLDEN_CASES["diffusion_wavefront3_steps8"]
  batched = _diffusion(tiny_model, [list(p) for p in prompts], **kw)
  assert int(batched.rounds[0]) != int(batched.rounds[1])  # the rows really finish at different times
  for row, prompt in enumerate(prompts):
    single = _diffusion(tiny_model, prompt[None], **kw)
    n = int(single.lengths[0])
    assert int(batched.lengths[row]) == n
    np.testing.assert_array_equal(np.asarray(batched.sequences)[row, :n], np.asarray(single.sequences)[0, :n])
    for field in ("core_forward_passes", "tokens_forwarded", "cache_clears", "standing_waves", "rounds"):
      assert int(getattr(batched, field)[row]) == int(getattr(single, field)[0]), field
    np.testing.assert_array_equal(np.asarray(batched.recurrences)[row, :n], np.asarray(single.recurrences)[0, :n])


@pytest.mark.parametrize("kwargs, match", [
    (dict(freeze_strategy="nope"), "freeze_strategy"),
    (dict(full_prefill=False, max_wavefront=4), "max_wavefront"),
    (dict(init_scale=1.0), "key="),
    (dict(inner_recurrence=0), "inner_recurrence"),
])
def test_bad_settings_are_refused(tiny_model, golden, kwargs, match):
  config, params = tiny_model
  kwargs = dict(dict(init_scale=0.0, cache="latest-m4", max_new_tokens=4), **kwargs)
  with pytest.raises(ValueError, match=match):
    hj.generate_diffusion(params, golden["tokens"][:1, :PROMPT], config=config, **kwargs)


def test_sampled_run_with_guesses_and_noise_is_keyed(tiny_model, golden):
  """Sampling, random initial states, noise mixing and random guesses for headway > 1 all follow the key; the
  default cache (latest-m4-compress-s4) and DRY run in the same program."""
  config, params = tiny_model
  kw = dict(config=config, max_new_tokens=6, num_steps=4, init_scale=1.0, temperature=1.0, top_k=20, headway=2,
            max_wavefront=8, dry_multiplier=0.8, freeze_strategy="fixed", max_diffusion_steps=64)
  prompt = golden["tokens"][:, :PROMPT]
  a, b, c = (hj.generate_diffusion(params, prompt, key=jax.random.key(k), **kw) for k in (0, 0, 1))
  np.testing.assert_array_equal(np.asarray(a.sequences), np.asarray(b.sequences))
  assert not np.array_equal(np.asarray(a.sequences), np.asarray(c.sequences))
  for out in (a, c):
    lengths = np.asarray(out.lengths)
    assert (lengths >= PROMPT + 6).all()
    for row, n in zip(np.asarray(out.sequences), lengths):
      assert ((row[:n] >= 0) & (row[:n] < config.vocab_size)).all() and (row[n:] == hj.decoding.PAD_ID).all()


@pytest.mark.parametrize("strategy", ["token-stability", "latent-acceleration-1", "latent-acceleration-2"])
def test_other_freeze_strategies_decode(tiny_model, golden, strategy):
  """The remaining freeze rules run batched: every row freezes past its prompt (which they keep, having a prefill)
  and the counters agree with the rounds run."""
  out = _diffusion(tiny_model, golden["tokens"][:, :PROMPT], freeze_strategy=strategy, max_new_tokens=6,
                   max_wavefront=8, max_diffusion_steps=200)
  rounds = np.asarray(out.rounds)
  assert (rounds >= 1).all() and (rounds <= 201).all()
  np.testing.assert_array_equal(np.asarray(out.core_forward_passes), 1 + 4 * rounds)
  for row, n, prompt in zip(np.asarray(out.sequences), np.asarray(out.lengths), golden["tokens"][:, :PROMPT]):
    assert n > PROMPT and (row[:PROMPT] == prompt).all() and (row[n:] == hj.decoding.PAD_ID).all()
