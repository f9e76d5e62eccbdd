"""Slot mapping of every cache strategy, visibility rules, per-row writes, bit storage and the memory helper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import huginn_jax as hj
from huginn_jax.decoding import cache as cache_lib
import jaxpr_walk


def _original_core_index(strategy: str, flat: int) -> int:
  """The original's cache index of core layer ``flat`` (step * 4 + layer), offset by the 2 prelude slots
  (a transcription of the remapping at the top of its ``HuginnDynamicCache.update``)."""
  idx = 2 + flat
  if "compress-" in strategy:
    if "compress-s" in strategy:
      return (idx - 2) % int(strategy.split("compress-")[1][1:]) + 2
    if "compress-anchor" in strategy:
      return idx if idx - 2 < 4 * 8 else 34 + (idx - 34) % 4
    return (idx - 2) // int(strategy.split("compress-")[1][1:]) + 2
  return idx


@pytest.mark.parametrize("strategy", ["full", "latest-m4", "compress-s4", "compress-s3", "compress-r4", "compress-r3",
                                      "compress-anchor", "latest-m4-compress-s16", "latest-m4-compress-s4",
                                      "always-last-m4-compress-r2", "skip-compress-anchor", "available-m4", "skip"])
def test_slot_mapping_matches_the_original(strategy):
  config = hj.get_config("huginn-0125")
  layout = cache_lib.cache_layout(strategy, config, 32)
  core = [layout.core_slot(s, j) for s in range(32) for j in range(4)]
  assert core == [_original_core_index(strategy, f) for f in range(128)]
  assert sorted(set(core)) == list(range(2, 2 + layout.core_slots))  # every core slot is used, none wasted
  specials = [layout.prelude_slot(0), layout.prelude_slot(1), layout.coda_slot(0), layout.coda_slot(1)]
  assert specials[:2] == [0, 1] and len(set(specials)) == 4 and not set(specials) & set(core)
  assert max(specials) == layout.n_slots - 1


def test_slot_counts_and_memory_of_huginn():
  config = hj.get_config("huginn-0125")
  counts = {s: cache_lib.cache_layout(s, config, max_depth=32).n_slots
            for s in ("full", "latest-m4", "compress-s4", "compress-r4", "compress-r8")}
  assert counts == {"full": 132, "latest-m4": 132, "compress-s4": 8, "compress-r4": 36, "compress-r8": 20}
  per_token = cache_lib.cache_bytes(config, "full", max_depth=32, batch=1, max_len=1)
  assert per_token == 132 * 2 * 5280 * 2  # K and V, bf16
  assert abs(per_token / 2**20 - 2.66) < 0.01  # DESIGN.md: 2.66 MiB/token
  table = cache_lib.memory_table(config, max_depth=32, batch=1, max_len=4096)
  assert "compress-s4" in table and f"{per_token * 4096 / 2**30:.3f}" in table


def test_the_old_num_steps_keyword_of_the_cache_bound_still_works_with_a_warning():
  """The cache-sizing bound is ``max_depth`` (``num_steps`` is an iteration count); the old keyword still works."""
  config = hj.get_config("tiny")
  with pytest.warns(DeprecationWarning, match="max_depth"):
    layout = cache_lib.cache_layout("compress-r3", config, num_steps=5)
  assert layout == cache_lib.cache_layout("compress-r3", config, 5) and layout.max_depth == 5
  with pytest.warns(DeprecationWarning, match="max_depth"):
    assert layout.num_steps == 5
  with pytest.warns(DeprecationWarning, match="max_depth"):
    assert cache_lib.cache_bytes(config, "full", num_steps=3, batch=2, max_len=7) == cache_lib.cache_bytes(
        config, "full", 3, 2, 7)
  with pytest.warns(DeprecationWarning, match="max_depth"):
    assert cache_lib.memory_table(config, num_steps=3) == cache_lib.memory_table(config, 3)
  with pytest.raises(TypeError, match="not both"):
    cache_lib.cache_layout("full", config, max_depth=3, num_steps=3)


def test_unknown_strategy_is_rejected():
  for name in ("compress-q4", "full-compress-s4", "latest-m4-compress", "compress-s4-latest-m4", "random"):
    with pytest.raises(ValueError, match="compress-s"):
      cache_lib.cache_layout(name, hj.get_config("tiny"), 4)


def _original_lookup(strategy: str, depths: list[int], cur: int):
  """The entry (the original's cache index, or None where the token is left out) each cached token gives a query of
  core index ``cur``, transcribed from the lookup branches of the original's ``HuginnDynamicCache.update``: token p
  holds the (remapped) indices of the core layers it ran, ``2 + f`` for f < 4 * depths[p]."""
  held = [{_original_core_index(strategy, f) for f in range(4 * n)} for n in depths]
  if all(cur in h for h in held) or strategy == "full" or "-" not in strategy.replace("compress-", ""):
    return [cur if cur in h else None for h in held]  # all present, "full", or a bare compress-*: what exists
  picks = []
  for h in held:
    try:
      if strategy.startswith("latest-m4"):
        picks.append(max(s for s in range(cur + 1) if s in h and s >= 2 and s % 4 == cur % 4))
      elif strategy.startswith("available-m4"):
        picks.append(cur if cur in h else max(s for s in range(cur + 1) if s in h and s >= 2 and s % 4 == cur % 4))
      elif strategy.startswith("always-last-m4"):
        picks.append(max(s for s in h if s >= 2 and s % 4 == cur % 4))
      else:  # skip
        picks.append(cur if cur in h else None)
    except ValueError:  # max() of nothing: the original raises; masked out here
      picks.append(None)
  return picks


LOOKUPS = ["full", "skip", "latest-m4", "available-m4", "always-last-m4", "compress-anchor", "latest-m4-compress-s16",
           "latest-m4-compress-s4", "always-last-m4-compress-s8", "available-m4-compress-r2", "skip-compress-anchor",
           "latest-m4-compress-anchor", "always-last-m4-compress-anchor"]


@pytest.mark.parametrize("strategy", LOOKUPS)
def test_lookup_rules_pick_the_originals_entries(strategy):
  """Tokens that ran different numbers of recurrences (as after early exits): for every query slot, the slot each
  token is read at and whether it is seen at all equal the original's lookup, compression included."""
  config = hj.get_config("tiny")
  num_steps = 11  # beyond the 8 anchored recurrences of compress-anchor
  layout = cache_lib.cache_layout(strategy, config, num_steps)
  rows = [[11, 1, 3, 9, 6], [4, 4, 4, 4, 4], [11, 11, 11, 11, 11]]
  cache = cache_lib.init_cache(layout, config, batch=len(rows), max_len=5)
  ids = jnp.arange(layout.n_slots, dtype=jnp.float32)[:, None, None, None, None]
  cache = cache.replace(k_store=cache.k_store + ids, depth=jnp.array(rows, jnp.int32))
  seen = jnp.full((len(rows),), 5)
  for step in range(num_steps):
    for j in range(4):
      slot = layout.core_slot(step, j)
      keys, _ = cache_lib.read_core_kv(cache, layout, step, j, seen)
      visible = np.asarray(cache_lib.core_visible(layout, cache.depth, slot, seen))
      for b, depths in enumerate(rows):
        expected = _original_lookup(strategy, depths, _original_core_index(strategy, 4 * step + j))
        got = [int(k) if v else None for k, v in zip(np.asarray(keys)[b, 0, :, 0], visible[b])]  # [B, H, T, D]
        assert got == expected, (strategy, step, j, depths)


def test_available_equals_latest_and_always_last_differs():
  """available-m4 reads what latest-m4 reads; always-last-m4 reads later steps when a token is missing."""
  config = hj.get_config("tiny")
  depth = jnp.array([[4, 1]])
  picks = {name: np.asarray(cache_lib.lookup_slots(cache_lib.cache_layout(name, config, 4), depth, 2 + 4 * 1 + 2)[0])
           for name in ("latest-m4", "available-m4", "always-last-m4")}
  np.testing.assert_array_equal(picks["latest-m4"], [[6, 2]])  # step 1 layer 2; the 1-step token at step 0
  np.testing.assert_array_equal(picks["available-m4"], picks["latest-m4"])
  np.testing.assert_array_equal(picks["always-last-m4"], [[14, 2]])  # the 4-step token at its last step


def test_writes_go_to_each_rows_position_and_respect_the_gate():
  config = hj.get_config("tiny")
  layout = cache_lib.cache_layout("full", config, 2)
  cache = cache_lib.init_cache(layout, config, batch=3, max_len=6)
  k = jnp.arange(3 * 2 * 4 * 16, dtype=jnp.float32).reshape(3, 2, 4, 16) + 1
  start, gate = jnp.array([0, 3, 4]), jnp.array([True, True, False])
  cache = cache_lib.write_kv(cache, 5, start, k, -k, gate)
  cache = cache_lib.set_depth(cache, start, 2, 7, gate)
  got = np.asarray(cache_lib.read_slot(cache, 5)[0]).swapaxes(1, 2)  # read heads-major: [B, H, T, D]
  np.testing.assert_array_equal(got[0, :2], k[0])
  np.testing.assert_array_equal(got[1, 3:5], k[1])
  assert not got[0, 2:].any() and not got[1, :3].any() and not got[2].any()  # nothing else, gated row untouched
  assert cache.k_store.shape == (layout.n_slots, 3, config.n_heads, 6, config.head_dim)
  np.testing.assert_array_equal(np.asarray(cache_lib.read_slot(cache, 5)[1]).swapaxes(1, 2), -got)
  assert not np.asarray(cache.k_store[:5]).any() and not np.asarray(cache.k_store[6:]).any()
  np.testing.assert_array_equal(np.asarray(cache.depth), [[7, 7, 0, 0, 0, 0], [0, 0, 0, 7, 7, 0], [0] * 6])


@pytest.mark.parametrize("strategy", ["full", "compress-s4", "compress-s3", "compress-s64", "compress-r4",
                                      "compress-r3", "compress-r5", "compress-anchor", "latest-m4-compress-r2"])
def test_slots_written_in_closed_form_equal_the_table(strategy):
  """The traced count of written core slots (arithmetic, so it fuses into the mask) is the first_writer table's."""
  config = hj.get_config("tiny")
  layout = cache_lib.cache_layout(strategy, config, 12)
  depth = jnp.arange(-1, 15, dtype=jnp.int32)[None]
  expected = layout.slots_written()[np.clip(np.asarray(depth), 0, 12)]
  np.testing.assert_array_equal(np.asarray(cache_lib._written(layout, depth)), expected)


@pytest.mark.parametrize("strategy", ["full", "compress-s4", "compress-r4", "compress-anchor", "latest-m4"])
def test_visibility_is_elementwise_so_it_fuses_into_the_mask(strategy):
  """No gather in the core-slot visibility: the decode loop computes it at every core iteration, and on XLA CPU a
  gather there is a kernel of its own that the rest of the iteration waits for (a table lookup there made batch-1
  decoding measurably slower)."""
  layout = cache_lib.cache_layout(strategy, hj.get_config("tiny"), 8)
  jaxpr = jax.make_jaxpr(lambda depth, step: cache_lib.core_visible(layout, depth, layout.core_slot(step, 1)))(
      jnp.zeros((2, 16), jnp.int32), jnp.int32(3))
  assert not [e for e, _ in jaxpr_walk.eqns(jaxpr.jaxpr) if "gather" in e.primitive.name], jaxpr


def test_visibility_follows_the_depth_of_each_token():
  config = hj.get_config("tiny")
  depth = jnp.array([[1, 3, 2, 0]])
  full = cache_lib.cache_layout("full", config, 3)
  # full: core slot of step s is visible to tokens with more than s iterations
  for step in range(3):
    got = np.asarray(cache_lib.core_visible(full, depth, full.core_slot(step, 2)))
    np.testing.assert_array_equal(got, np.asarray(depth) > step)
  latest = cache_lib.cache_layout("latest-m4", config, 3)
  np.testing.assert_array_equal(np.asarray(cache_lib.core_visible(latest, depth, latest.core_slot(2, 0))),
                                [[True, True, True, False]])
  # compress-r8: slot 1 (flat core indices 8..11 = step 2) is written only by tokens with 3 iterations
  r8 = cache_lib.cache_layout("compress-r8", config, 3)
  np.testing.assert_array_equal(np.asarray(cache_lib.core_visible(r8, depth, r8.core_slot(2, 1))),
                                [[False, True, False, False]])
  np.testing.assert_array_equal(np.asarray(cache_lib.core_visible(r8, depth, r8.core_slot(1, 3))),
                                [[True, True, True, False]])


def test_latest_m4_reads_each_token_at_its_last_step_of_the_same_layer():
  config = hj.get_config("tiny")
  layout = cache_lib.cache_layout("latest-m4", config, 4)
  cache = cache_lib.init_cache(layout, config, batch=1, max_len=4)
  ids = jnp.arange(layout.n_slots, dtype=jnp.float32)[:, None, None, None, None]
  pos = 1000 * jnp.arange(4, dtype=jnp.float32)[None, None, None, :, None]  # [slots, B, H, T, D]: T is axis 3
  cache = cache.replace(k_store=cache.k_store + ids + pos, v_store=cache.v_store - ids,
                        depth=jnp.array([[4, 1, 2, 3]]))
  for step in range(4):
    k, v = cache_lib.read_core_kv(cache, layout, step, 1)
    expected = np.array([layout.core_slot(min(step, d - 1), 1) for d in (4, 1, 2, 3)])
    for head in range(k.shape[1]):  # every head reads its own row of each token's entry
      np.testing.assert_array_equal(np.asarray(k)[0, head, :, 0], expected + 1000 * np.arange(4))
    np.testing.assert_array_equal(np.asarray(v)[0, 0, :, 0], -expected)


def test_16_bit_caches_are_stored_as_bits_and_read_back_exactly():
  config = hj.get_config("tiny")
  layout = cache_lib.cache_layout("full", config, 2)
  cache = cache_lib.init_cache(layout, config, batch=2, max_len=5, dtype="bfloat16")
  assert cache.k_store.dtype == jnp.uint16 and cache.dtype == "bfloat16"
  k = jax.random.normal(jax.random.key(0), (2, 3, 4, 16), jnp.bfloat16)
  cache = cache_lib.write_kv(cache, 3, jnp.array([0, 2]), k, k * 2, jnp.array([True, True]))
  keys, values = (x.swapaxes(1, 2) for x in cache_lib.read_slot(cache, 3))  # read [B, H, T, D]
  assert keys.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(keys[0, :3], np.float32), np.asarray(k[0], np.float32))
  np.testing.assert_array_equal(np.asarray(values[1, 2:], np.float32), np.asarray(k[1] * 2, np.float32))
