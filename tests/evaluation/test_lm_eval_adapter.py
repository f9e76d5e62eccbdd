"""The lm-eval adapter on the tiny fixture: log-likelihoods, greedy flags and generation against the model API."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

import huginn_jax as hj
from huginn_jax.evaluation.lm_eval_adapter import HuginnLM, cut_at_stop

STEPS = 3
NEVER = (-1,)  # a stop id no row produces: one stop-id shape for every generation here, so they share programs
WIDTH = 16  # every reference generation runs alone, right-padded to this width (one program per max_new_tokens)


@pytest.fixture(scope="module")
def tokenizer():
  """A 256-word word-level tokenizer (w0..w255), the tiny model's vocabulary size."""
  tok = tokenizers.Tokenizer(models.WordLevel({f"w{i}": i for i in range(256)}, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return tok


@pytest.fixture(scope="module")
def lm(tiny_model, tokenizer):
  config, params = tiny_model
  return HuginnLM(params, config, tokenizer, num_steps=STEPS, batch_size=2, pad_multiple=8, stop_ids=NEVER)


def _req(*args):
  return SimpleNamespace(args=args)


def _logp(tiny_model, ids):
  config, params = tiny_model
  logits = hj.forward(params, np.array([ids]), config=config, num_steps=STEPS, init_scale=0.0).logits
  return np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1))[0]


def test_loglikelihood_is_the_sum_of_log_softmax_over_the_continuation(lm, tiny_model):
  requests = [_req("w5 w9 w17", " w3 w4"), _req("w1 w2", " w200"), _req("w7 w8 w9 w10 w11", " w12")]
  got = lm.loglikelihood(requests)  # 3 requests with batch_size 2: a padded second batch
  for (ctx, cont), (ll, greedy) in zip([r.args for r in requests], got):
    ids = [int(w[1:]) for w in (ctx + cont).split()]
    k = len(cont.split())
    logp = _logp(tiny_model, ids)
    manual = sum(logp[t - 1, ids[t]] for t in range(len(ids) - k, len(ids)))
    assert ll == pytest.approx(manual, abs=1e-4)
    assert greedy == all(logp[t - 1].argmax() == ids[t] for t in range(len(ids) - k, len(ids)))


def test_greedy_flag_is_true_for_the_argmax_continuation(lm, tiny_model):
  ctx = [4, 8, 15]
  nxt = int(_logp(tiny_model, ctx)[-1].argmax())
  other = (nxt + 1) % 256
  ctx_text = " ".join(f"w{i}" for i in ctx)
  (_, greedy), (_, not_greedy) = lm.loglikelihood([_req(ctx_text, f" w{nxt}"), _req(ctx_text, f" w{other}")])
  assert greedy and not not_greedy


def test_rolling_loglikelihood_scores_every_token_after_the_first(lm, tiny_model):
  ids = [3, 1, 4, 1, 5, 9, 2, 6]
  logp = _logp(tiny_model, ids)
  (got,) = lm.loglikelihood_rolling([_req(" ".join(f"w{i}" for i in ids))])
  assert got == pytest.approx(sum(logp[t - 1, ids[t]] for t in range(1, len(ids))), abs=1e-4)


def _alone(tiny_model, ids, max_new, stop_ids):
  """hj.generate on one request alone: (new tokens, how many). The row is right-padded to WIDTH (rows decode as if
  unpadded, tests/decoding/test_generate.py) with the adapter's key argument, so these runs share compilations."""
  config, params = tiny_model
  prompt = np.zeros((1, WIDTH), np.int32)
  prompt[0, :len(ids)] = ids
  out = hj.generate(params, prompt, prompt_lengths=np.array([len(ids)], np.int32), config=config,
                    max_new_tokens=max_new, num_steps=STEPS, init_scale=0.0, key=jax.random.key(0), stop_ids=stop_ids)
  return np.asarray(out.tokens)[0].tolist(), int(np.asarray(out.num_generated)[0])


def test_generate_until_decodes_generate_and_cuts_at_the_stop_string(lm, tiny_model, tokenizer):
  ctx = [11, 22, 33, 44]
  ref, n = _alone(tiny_model, ctx, 4, NEVER)
  assert n == 4
  text = tokenizer.decode(ref)
  context = " ".join(f"w{i}" for i in ctx)
  (full,) = lm.generate_until([_req(context, {"until": [], "max_gen_toks": 4})])
  assert full == text
  stop = f"w{ref[2]}"
  (cut,) = lm.generate_until([_req(context, {"until": [stop], "max_gen_toks": 4})])
  assert cut == text[:text.find(stop)] and stop not in cut


def test_cut_at_stop_and_bad_requests(lm):
  assert cut_at_stop("a. b\n\nc", ["\n\n", "."]) == "a"
  assert cut_at_stop("abc", []) == "abc"
  with pytest.raises(ValueError, match="prefix_ids"):
    lm.loglikelihood([_req("", "w1")])
  with pytest.raises(ValueError, match="max_gen_toks"):
    lm.generate_until([_req("w1 w2", {"max_gen_toks": lm.max_length})])


def _words(ids):
  return " ".join(f"w{i}" for i in ids)


def _one_by_one(tiny_model, tokenizer, ids, max_new, until, stop_ids):
  """What generate_until returned when it ran hj.generate on each request alone."""
  tokens, n = _alone(tiny_model, ids, max_new, stop_ids)
  new = [t for t in tokens[:n] if t not in stop_ids]
  return cut_at_stop(tokenizer.decode(new), until)


def test_batched_generate_until_equals_one_request_at_a_time(tiny_model, tokenizer):
  """Contexts of 2 to 12 tokens (four width buckets), two max_gen_toks, stop strings and a stop id that ends some
  rows early: batched four at a time (a group of five split in two, a group of three filled up to four), each
  result is what hj.generate gives the request alone, in the request order."""
  config, params = tiny_model
  rng = np.random.default_rng(3)
  contexts = [rng.integers(0, 256, n).tolist() for n in (7, 12, 5, 2, 3, 8, 4, 3, 6, 3, 7)]
  max_gen = [6, 4, 6, 6, 6, 6, 6, 4, 6, 6, 6]  # groups of 5 (width 8), 3 (width 4), 1, 1 and 1 requests
  free = [_one_by_one(tiny_model, tokenizer, c, m, [], NEVER) for c, m in zip(contexts, max_gen)]
  stop_id = int(free[-1].split()[2][1:])  # the third word of the last row becomes a stop token
  until = [[], [free[1].split()[1]], ["\n\n"], [free[3].split()[-1], "w999"], [], [], "w7", [], [], [], []]
  requests = [_req(_words(c), {"until": u, "max_gen_toks": m}) for c, m, u in zip(contexts, max_gen, until)]
  expected = [_one_by_one(tiny_model, tokenizer, c, m, [u] if isinstance(u, str) else u, (stop_id,))
              for c, m, u in zip(contexts, max_gen, until)]
  assert len(set(expected)) > 5 and len(expected[-1].split()) == 2  # distinct rows; the stop id cut the last
  assert expected[1] != free[1] and expected[3] != free[3]  # the stop strings cut
  lm = HuginnLM(params, config, tokenizer, num_steps=STEPS, stop_ids=(stop_id,), generate_batch_size=4)
  assert lm.generate_until(requests) == expected


def test_generate_until_batches_requests(monkeypatch, tiny_model, tokenizer):
  """Five requests of one width bucket and setting need one hj.generate call with the default batch size (filled up
  to eight rows), two with generate_batch_size=4, where one call per request ran before. (Width 8, six new tokens
  and NEVER: the shapes of the group of five above, so the batch-size-4 calls reuse its programs.)"""
  config, params = tiny_model
  calls = []
  import importlib
  generate_lib = importlib.import_module("huginn_jax.decoding.generate")  # the module (the package exports the function)
  real = generate_lib.generate  # the adapter calls it from its module (it does not import the package root)
  monkeypatch.setattr(generate_lib, "generate", lambda *a, **k: calls.append(np.shape(a[1])) or real(*a, **k))
  requests = [_req(_words(range(i, i + n)), {"until": [], "max_gen_toks": 6}) for i, n in enumerate((5, 6, 7, 8, 5))]
  got = HuginnLM(params, config, tokenizer, num_steps=STEPS, stop_ids=NEVER).generate_until(requests)
  assert calls == [(8, 8)]  # five rows filled up to eight, eight tokens wide
  assert HuginnLM(params, config, tokenizer, num_steps=STEPS, stop_ids=NEVER,
                  generate_batch_size=4).generate_until(requests) == got
  assert calls[1:] == [(4, 8), (1, 8)]
  assert len(got) == 5 and all(len(text.split()) == 6 for text in got)


def test_a_shared_cache_or_an_exit_rule_scores_token_by_token(tiny_model, tokenizer, golden):
  """With cache="compress-s4" the golden compress-s4 generation is the greedy continuation of its prompt; an exit
  rule tallies fewer iterations than the maximum per task."""
  config, params = tiny_model
  sequence = golden["gen_greedy_steps8_compress_s4"][0]
  context, continuation = _words(sequence[:8]), " " + _words(sequence[8:])
  shared = HuginnLM(params, config, tokenizer, num_steps=8, cache="compress-s4", batch_size=2)
  ((_, greedy),) = shared.loglikelihood([_req(context, continuation)])
  assert greedy and shared.mean_iterations() == {"all": 8}
  adaptive = HuginnLM(params, config, tokenizer, num_steps=8, exit_criterion="latent-diff", exit_threshold=0.5,
                      batch_size=2)
  adaptive.loglikelihood([_req(context, continuation)])
  assert 1 <= adaptive.mean_iterations()["all"] < 8
