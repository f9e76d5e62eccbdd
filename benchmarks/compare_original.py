"""huginn-jax against the original PyTorch Huginn, side by side on this machine, on the same random weights.

PATH is a checkout of the original repository (github.com/seal-rg/recurrent-pretraining); its
``recpre/raven_modeling_minimal.py`` and ``recpre/raven_config_minimal.py`` are imported from there at run time
(nothing of it is part of huginn-jax). The environment needs torch and a transformers 4.x besides huginn-jax:
``pip install torch 'transformers>=4.40,<5'``, in a virtual environment of its own (transformers 4.x needs older
tokenizers and huggingface_hub than ``scripts/constraints.txt`` pins; see benchmarks/README.md).

The script builds one random model with the original code (norm weights and qk_bias randomised too, so every
parameter matters), saves it with ``save_pretrained`` into a temporary directory and loads it with ``hj.load``;
both must give the same logits, loss and gradients in float32 before anything is timed. Then, alternating the two
implementations (original, huginn-jax, original, huginn-jax: ``--rounds`` rounds, each the best of ``--repeats``
runs), it times:

- prefill: batch 1 x ``--prefill-len`` tokens at r iterations, logits of every position (``jax.jit(hj.forward)``
  against the original's ``forward`` under ``torch.no_grad``), from a zero initial state;
- cached greedy decoding at each of ``--batches``: ``hj.generate`` against the original's own ``generate`` (the
  Hugging Face loop with its ``HuginnDynamicCache``), prompt ``--prompt-len``, ``--new-tokens`` new tokens, r
  iterations per token. Prefill excluded: decode tok/s = B (N - 1) / (time of N new tokens - time of 1 new token),
  both measured (ours stops after the first token through a stop id, so one compiled program serves both);
- loss and gradients on ``--train-len`` tokens at a fixed depth of n iterations without and k with gradient
  (``jax.jit(jax.value_and_grad(hj.loss))`` against the original's ``forward(labels=..., num_steps=(n, k))`` and
  ``loss.backward()``; float32 weights, bf16 autocast when ``--dtype bfloat16``);
- the first call of ``hj.generate`` (compilation included), batch 1, right after loading.

In the same run it measures what this machine can do: the float32 (or bf16) GEMM rate at the model's matmul
shapes in torch and in XLA, weighted as a prefill uses them, and the read bandwidth of a large array sum. The
table's limit is the prefill / training FLOPs per token (``huginn_jax.flops``) at the better GEMM rate, and for
decoding the weights and KV read per step at that bandwidth (or its FLOPs, whichever takes longer).

  python benchmarks/compare_original.py --original ~/recurrent-pretraining                  # issue 15's shape
  python benchmarks/compare_original.py --original ~/recurrent-pretraining --shape quick --repeats 1 --rounds 1

Ratios mean something only when nothing else runs on the machine; the two implementations run alternately so
that a slow period hits both.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import huginn_jax as hj
from huginn_jax import attention, flops, layers, perf
from huginn_jax.checkpoint import hf as hf_lib

import _common

# name -> (d_model, heads, MLP size, vocab, prelude/core/coda layers, r, prefill, prompt, new tokens, train, n, k)
SHAPES = {
    "issue15": dict(d_model=512, heads=8, mlp=1536, vocab=32768, layers=(2, 4, 2), num_steps=8, prefill_len=512,
                    prompt_len=64, new_tokens=32, train_len=256, depth=(6, 2)),
    "quick": dict(d_model=128, heads=4, mlp=384, vocab=4096, layers=(2, 4, 2), num_steps=4, prefill_len=128,
                  prompt_len=16, new_tokens=8, train_len=64, depth=(3, 1)),
}
ORIGINAL_FILES = ("recpre/raven_modeling_minimal.py", "recpre/raven_config_minimal.py")
ORIGINAL_PACKAGE = "_huginn_original"  # the name the original's recpre folder is imported under
IMPLS = ("original", "huginn-jax")


# --- arguments -----------------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--original", required=True, metavar="PATH",
                 help="a checkout of github.com/seal-rg/recurrent-pretraining (holds recpre/raven_modeling_minimal.py)")
  p.add_argument("--shape", default="issue15", choices=sorted(SHAPES),
                 help="issue15: d=512, 8 heads, MLP 1536, vocab 32768, 2/4/2 layers, r=8 (default); quick: a small "
                      "shape that runs in a minute on a CPU. The flags below override its fields.")
  p.add_argument("--d-model", type=int)
  p.add_argument("--heads", type=int)
  p.add_argument("--mlp", type=int, help="intermediate size of the gated MLP")
  p.add_argument("--vocab", type=int)
  p.add_argument("--layers", type=int, nargs=3, metavar=("PRELUDE", "CORE", "CODA"))
  p.add_argument("--num-steps", type=int, help="r: core iterations of prefill and of every decoded token")
  p.add_argument("--prefill-len", type=int)
  p.add_argument("--prompt-len", type=int, help="prompt length of the decoding rows")
  p.add_argument("--new-tokens", type=int, help="tokens decoded per row (at least 2)")
  p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="decoding batch sizes")
  p.add_argument("--train-len", type=int, help="tokens of the loss+gradients row")
  p.add_argument("--depth", type=int, nargs=2, metavar=("N", "K"),
                 help="iterations without and with gradient of the loss+gradients row")
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                 help="compute dtype of both (default: bfloat16 on a GPU, float32 on a CPU); the check that both "
                      "agree always runs in float32")
  p.add_argument("--attention", default="auto", choices=attention.IMPLEMENTATIONS,
                 help="huginn-jax's attention implementation (auto: blocked on a CPU for prefill and training)")
  p.add_argument("--remat", default=None, help="hj.loss remat_policy (default: hj.loss's own default)")
  p.add_argument("--only", nargs="+", choices=("prefill", "decode", "train"), default=["prefill", "decode", "train"])
  p.add_argument("--repeats", type=int, default=3, help="timed runs per round; the best is kept")
  p.add_argument("--rounds", type=int, default=2, help="times each pair is timed alternately (original, ours)")
  p.add_argument("--tolerance", type=float, default=1e-3,
                 help="largest float32 disagreement allowed, relative to the largest |logit| (and for the loss and "
                      "each gradient, relative to its size)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default=None, help="append one JSON line per result to this file")
  p.add_argument("--profile", default=None, metavar="DIR",
                 help="after the table, profile one more prefill, batch-1 decode and loss+gradients of each "
                      "implementation (jax.profiler / torch.profiler traces into DIR) and print where the time went, "
                      "by category")
  return p


@dataclasses.dataclass(frozen=True)
class Setting:
  d_model: int
  heads: int
  mlp: int
  vocab: int
  layers: tuple[int, int, int]
  num_steps: int
  prefill_len: int
  prompt_len: int
  new_tokens: int
  train_len: int
  depth: tuple[int, int]

  @property
  def max_len(self) -> int:
    return max(self.prefill_len, self.prompt_len + self.new_tokens, self.train_len + 1, 64)


def setting(args) -> Setting:
  fields = dict(SHAPES[args.shape])
  for name in fields:
    value = getattr(args, name)
    if value is not None:
      fields[name] = tuple(value) if isinstance(value, list) else value
  s = Setting(**fields)
  if s.d_model % s.heads:
    raise SystemExit(f"--d-model {s.d_model} is not a multiple of --heads {s.heads}.")
  if s.new_tokens < 2:
    raise SystemExit("--new-tokens must be at least 2 (decode speed is the difference of N and 1 new tokens).")
  if s.depth[1] < 1 or s.depth[0] < 0:
    raise SystemExit(f"--depth needs N >= 0 and K >= 1, got {s.depth}.")
  return s


def check_original_path(path: str) -> str:
  path = os.path.abspath(os.path.expanduser(path))
  missing = [f for f in ORIGINAL_FILES if not os.path.isfile(os.path.join(path, f))]
  if missing:
    raise SystemExit(f"--original {path}: no {', '.join(missing)} there. Pass a checkout of "
                     "https://github.com/seal-rg/recurrent-pretraining (git clone it anywhere outside this repo).")
  return path


# --- the original, imported from PATH --------------------------------------------------------------------------------

def import_torch():
  try:
    import torch
    import transformers
  except ImportError as err:
    raise SystemExit(f"compare_original.py needs torch and transformers 4.x next to huginn-jax ({err}); install "
                     "them with: python -m pip install torch 'transformers>=4.40,<5' (in a virtual environment of its "
                     "own: see benchmarks/README.md).")
  if not transformers.__version__.startswith("4."):
    raise SystemExit(f"the original's modeling file is written for transformers 4.x; found {transformers.__version__}."
                     " Install 'transformers>=4.40,<5'.")
  return torch, transformers


def import_original(path: str):
  """The original's modeling and config modules, imported from ``path/recpre`` without its package ``__init__``
  (which pulls in the training stack)."""
  if ORIGINAL_PACKAGE not in sys.modules:
    package = types.ModuleType(ORIGINAL_PACKAGE)
    package.__path__ = [os.path.join(path, "recpre")]
    sys.modules[ORIGINAL_PACKAGE] = package
  modeling = importlib.import_module(f"{ORIGINAL_PACKAGE}.raven_modeling_minimal")
  config = importlib.import_module(f"{ORIGINAL_PACKAGE}.raven_config_minimal")
  return modeling, config


def original_commit(path: str) -> str:
  try:
    out = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         timeout=10)
  except (OSError, subprocess.TimeoutExpired):
    return "unknown"
  return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown (not a git checkout)"


def build_original(modeling, config_mod, torch, s: Setting, seed: int):
  """A random float32 model of the original's code at ``s``; norms and qk_bias randomised as in the test fixture."""
  prelude, core, coda = s.layers
  config = config_mod.RavenConfig(
      n_embd=s.d_model, n_heads=s.heads, n_layers=sum(s.layers), block_size=s.max_len, vocab_size=s.vocab,
      padding_multiple=1, intermediate_size=s.mlp, n_layers_in_prelude=prelude, n_layers_in_recurrent_block=core,
      n_layers_in_coda=coda, mean_recurrence=s.num_steps, mean_backprop_depth=s.depth[1])
  torch.manual_seed(seed)
  model = modeling.RavenForCausalLM(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or "ln_f" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif "qk_bias" in name:
        p.copy_(0.1 * torch.randn_like(p))
  return model.eval()


# --- timing ----------------------------------------------------------------------------------------------------------

class Sync:
  """Waits for the device of either framework, so wall-clock times cover the work."""

  def __init__(self, torch, device):
    self.torch, self.device = torch, device

  def torch_sync(self):
    if self.device.type == "cuda":
      self.torch.cuda.synchronize()


def seconds(fn: Callable[[], None]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def alternate(fns: dict[str, Callable[[], None]], rounds: int, repeats: int) -> dict[str, list[float]]:
  """Best-of-``repeats`` seconds of every function, ``rounds`` times, the functions taken in turn each round (after
  one untimed warm-up call each: compilation, allocator caches)."""
  for fn in fns.values():
    fn()
  best: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      best[name].append(min(seconds(fn) for _ in range(max(repeats, 1))))
  return best


def repeat_until(fn: Callable[[], None], sync: Callable[[], None], min_s: float = 0.05) -> float:
  """Seconds per call of ``fn`` (called back to back, ``sync`` at the end), best of 3 batches of calls that last
  ``min_s`` or more."""
  fn()
  sync()
  once = seconds(lambda: (fn(), sync()))
  reps = int(min(max(1, math.ceil(min_s / max(once, 1e-9))), 10000))
  times = []
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(reps):
      fn()
    sync()
    times.append((time.perf_counter() - start) / reps)
  return min(times)


# --- the machine's limits --------------------------------------------------------------------------------------------

def matmul_shapes(config, s: Setting) -> list[tuple[str, int, int, int, int]]:
  """(name, M, K, N, uses per prefill) of the weight matmuls of a prefill of ``s.prefill_len`` tokens."""
  d, i, v = config.d_model, config.intermediate_size, config.vocab_size
  attn = config.n_heads * config.head_dim
  layers = config.n_layers_prelude + config.n_layers_coda + s.num_steps * config.n_layers_core
  m = s.prefill_len
  return [("qkv", m, d, 3 * attn, layers), ("attn out", m, attn, d, layers), ("mlp in", m, d, 2 * i, layers),
          ("mlp out", m, i, d, layers), ("adapter", m, 2 * d, d, s.num_steps), ("head", m, d, v, 1)]


def gemm_rates(torch, device, dtype: str, shapes) -> dict:
  """FLOP/s of torch and XLA matmuls at ``shapes``, per shape and weighted by uses (total FLOPs / total time)."""
  tdtype = getattr(torch, dtype)
  per_shape, totals = [], {impl: 0.0 for impl in ("torch", "xla")}
  total_flops = 0.0
  matmul = jax.jit(lambda a, b: layers.project("mk,kn->mn", a, b))  # as the model's matmuls run
  for name, m, k, n, uses in shapes:
    a, b = torch.randn(m, k, device=device, dtype=tdtype), torch.randn(k, n, device=device, dtype=tdtype)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    t_torch = repeat_until(lambda a=a, b=b: a @ b, sync)
    ja = jnp.ones((m, k), dtype) * 0.5
    jb = jnp.ones((k, n), dtype) * 0.5
    holder = {}

    def run_xla(ja=ja, jb=jb, holder=holder):
      holder["out"] = matmul(ja, jb)

    t_xla = repeat_until(run_xla, lambda holder=holder: holder["out"].block_until_ready())
    f = 2.0 * m * k * n
    per_shape.append({"name": name, "m": m, "k": k, "n": n, "uses": uses, "torch_flops": f / t_torch,
                      "xla_flops": f / t_xla})
    totals["torch"] += uses * t_torch
    totals["xla"] += uses * t_xla
    total_flops += uses * f
  return {"per_shape": per_shape, "torch_flops": total_flops / totals["torch"],
          "xla_flops": total_flops / totals["xla"]}


def bandwidth(torch, device) -> dict:
  """Bytes/s of reading (sum) and copying a large float32 array, in torch and XLA."""
  nbytes = (4 << 30) if device.type == "cuda" else (512 << 20)
  n = nbytes // 4
  sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
  x = torch.ones(n, device=device, dtype=torch.float32)
  y = torch.empty_like(x)
  out = {"bytes": nbytes,
         "torch_read": nbytes / repeat_until(lambda: x.sum(), sync),
         "torch_copy": 2 * nbytes / repeat_until(lambda: y.copy_(x), sync)}
  x = y = None  # free them before XLA's copy
  jx = jnp.ones((n,), jnp.float32)
  total, plus = jax.jit(jnp.sum), jax.jit(lambda a: a + 1.0)
  holder = {}

  def reads():
    holder["out"] = total(jx)

  def copies():
    holder["out"] = plus(jx)

  wait = lambda: holder["out"].block_until_ready()  # noqa: E731
  out["xla_read"] = nbytes / repeat_until(reads, wait)
  out["xla_copy"] = 2 * nbytes / repeat_until(copies, wait)
  out["read"] = max(out["torch_read"], out["xla_read"])
  return out


def measure_machine(torch, device, dtype: str, shapes, when: str, m: int) -> dict:
  """GEMM rates and bandwidth, printed."""
  limits, bw = gemm_rates(torch, device, dtype, shapes), bandwidth(torch, device)
  print(f"machine, {when}: {dtype} GEMM at the prefill's matmul shapes (M={m}), weighted by use: torch "
        f"{limits['torch_flops'] / 1e9:,.0f} GFLOP/s, XLA {limits['xla_flops'] / 1e9:,.0f} GFLOP/s "
        f"(" + ", ".join(f"{x['name']} {x['torch_flops'] / 1e9:,.0f}/{x['xla_flops'] / 1e9:,.0f}"
                         for x in limits["per_shape"]) + "); "
        f"memory: read {bw['torch_read'] / 1e9:,.1f} GB/s torch, {bw['xla_read'] / 1e9:,.1f} XLA; copy "
        f"{bw['torch_copy'] / 1e9:,.1f} / {bw['xla_copy'] / 1e9:,.1f} GB/s ({bw['bytes'] >> 20} MiB float32)",
        flush=True)
  return {"gemm": limits, "bandwidth": bw}


def best_machine(a: dict, b: dict) -> dict:
  """The faster of two measurements of each rate (a slow one was disturbed)."""
  gemm = {key: max(a["gemm"][key], b["gemm"][key]) for key in ("torch_flops", "xla_flops")}
  gemm["per_shape"] = [{**x, "torch_flops": max(x["torch_flops"], y["torch_flops"]),
                        "xla_flops": max(x["xla_flops"], y["xla_flops"])}
                       for x, y in zip(a["gemm"]["per_shape"], b["gemm"]["per_shape"])]
  bw = {key: max(a["bandwidth"][key], b["bandwidth"][key]) for key in a["bandwidth"]}
  return {"gemm": gemm, "bandwidth": bw, "gemm_flops": max(gemm["torch_flops"], gemm["xla_flops"]),
          "read_bytes_per_s": bw["read"]}


def limit_tokens_per_s(row: dict, flops_per_s: float, read_bytes_per_s: float) -> float:
  """The machine's limit for a row: its FLOPs at the GEMM rate; decoding also its bytes at the read bandwidth."""
  if row["work"] == "decode":
    return row["batch"] / max(row["bytes_per_step"] / read_bytes_per_s, row["flops_per_step"] / flops_per_s)
  return flops_per_s / row["flops_per_token"]


# --- the check -------------------------------------------------------------------------------------------------------

def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
  return float(np.linalg.norm((a - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-30))


def check_agreement(torch, model, config, params, s: Setting, tolerance: float, seed: int) -> dict:
  """Float32 logits, loss and every gradient of both on the same inputs; exits when they disagree."""
  rng = np.random.default_rng(seed + 1)
  tokens = rng.integers(0, s.vocab, (2, min(s.prefill_len, 64)), np.int32)
  with torch.no_grad():
    ref = model(torch.from_numpy(tokens).long(), num_steps=s.num_steps, init_scale=0.0).logits.numpy()
  ours = np.asarray(jax.jit(lambda p, t: hj.forward(p, t, config=config, num_steps=s.num_steps,
                                                    init_scale=0.0).logits)(params, tokens))
  logit_err = float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))

  n, k = s.depth
  seq = rng.integers(0, s.vocab, (1, min(s.train_len, 64) + 1), np.int32)
  inputs, labels = seq[:, :-1], seq[:, 1:]
  model.zero_grad(set_to_none=True)
  loss_ref = model(torch.from_numpy(inputs).long(), labels=torch.from_numpy(labels).long(), num_steps=(n, k),
                   init_scale=0.0).loss
  loss_ref.backward()
  grads_ref = {name: p.grad.numpy() for name, p in model.named_parameters() if p.grad is not None}
  model.zero_grad(set_to_none=True)
  value, grads = jax.jit(jax.value_and_grad(lambda p: hj.loss(p, inputs, labels, config=config, depth=(n, k),
                                                              init_scale=0.0)))(params)
  loss_ref = float(loss_ref.detach())
  loss_err = abs(float(value) - loss_ref) / abs(loss_ref)
  grad_errs = {name: rel_err(g, grads_ref[name]) for name, g in hf_lib.iter_hf_tensors(grads, config)
               if name in grads_ref}
  missing = [r.hf_name for r in hf_lib.rules(config) if r.hf_name not in grads_ref]
  worst = max(grad_errs, key=grad_errs.get)
  result = {"logits_rel_err": logit_err, "loss_rel_err": loss_err, "grad_rel_err": grad_errs[worst],
            "grad_worst": worst, "loss": loss_ref}
  print(f"check (float32, zero initial state): logits max |diff| {logit_err:.1e} of the largest |logit| "
        f"(r={s.num_steps}, 2 x {tokens.shape[1]} tokens); loss {loss_ref:.5f} vs {float(value):.5f} "
        f"(rel. {loss_err:.1e}); gradients of {len(grad_errs)} tensors at n={n} + k={k}, worst {worst} "
        f"(rel. {grad_errs[worst]:.1e})", flush=True)
  failures = []
  if logit_err > tolerance:
    failures.append(f"logits differ by {logit_err:.2e} of the largest |logit|")
  if loss_err > tolerance:
    failures.append(f"the loss differs by {loss_err:.2e} (relative)")
  if grad_errs[worst] > tolerance:
    failures.append(f"the gradient of {worst} differs by {grad_errs[worst]:.2e} (relative)")
  if missing:
    failures.append(f"the original has no gradient for {', '.join(missing)}")
  if failures:
    raise SystemExit("huginn-jax and the original do not compute the same thing on these weights: "
                     + "; ".join(failures) + f" (tolerance {tolerance:g}). Nothing was timed: a speed comparison "
                     "of different computations means nothing. Check the original's version (its commit is "
                     "printed above) and hj.load's conversion.")
  return result


# --- the work --------------------------------------------------------------------------------------------------------

def prefill_fns(torch, sync, model, config, params, s: Setting, rng) -> dict:
  tokens = rng.integers(0, s.vocab, (1, s.prefill_len), np.int32)
  t_tokens = torch.from_numpy(tokens).long().to(sync.device)
  j_tokens = jax.device_put(tokens)
  forward = jax.jit(lambda p, t: hj.forward(p, t, config=config, num_steps=s.num_steps, init_scale=0.0).logits)

  def original():
    with torch.no_grad():
      model(t_tokens, num_steps=s.num_steps, init_scale=0.0)
    sync.torch_sync()

  def ours():
    forward(params, j_tokens).block_until_ready()

  return {"original": original, "huginn-jax": ours}


def decode_fns(torch, transformers, sync, model, config, params, s: Setting, batch: int, rng) -> dict:
  """Four runs: each implementation decoding N new tokens, and stopping after the first (prefill + 1 token)."""
  prompt = rng.integers(0, s.vocab, (batch, s.prompt_len), np.int32)
  t_prompt = torch.from_numpy(prompt).long().to(sync.device)
  mask = torch.ones_like(t_prompt)

  def original(n_new):
    gen = transformers.GenerationConfig(max_new_tokens=n_new, do_sample=False, eos_token_id=None, pad_token_id=0,
                                        use_cache=True)

    def run():
      out = model.generate(t_prompt, generation_config=gen, attention_mask=mask, num_steps=s.num_steps,
                           init_scale=0.0)
      sync.torch_sync()
      run.tokens = out[:, s.prompt_len:].cpu().numpy()
    return run

  def ours(stop_ids):
    def run():
      out = hj.generate(params, prompt, config=config, max_new_tokens=s.new_tokens, num_steps=s.num_steps,
                        init_scale=0.0, cache="full", stop_ids=stop_ids)
      run.tokens = np.asarray(jax.block_until_ready(out.tokens))
    return run

  never = np.full((batch,), -1, np.int32)
  full = ours(never)
  full()
  first = ours(full.tokens[:, 0].copy())  # every row stops at its first token: prefill + 1 token, same program
  return {"original N": original(s.new_tokens), "original 1": original(1), "huginn-jax N": full,
          "huginn-jax 1": first}


def train_fns(torch, sync, model, config, params, s: Setting, dtype: str, remat, rng) -> dict:
  n, k = s.depth
  seq = rng.integers(0, s.vocab, (1, s.train_len + 1), np.int32)
  inputs, labels = seq[:, :-1], seq[:, 1:]
  t_inputs = torch.from_numpy(inputs).long().to(sync.device)
  t_labels = torch.from_numpy(labels).long().to(sync.device)
  j_inputs, j_labels = jax.device_put(inputs), jax.device_put(labels)
  options = {} if remat is None else {"remat_policy": remat}
  step = jax.jit(jax.value_and_grad(lambda p, x, y: hj.loss(p, x, y, config=config, depth=(n, k), init_scale=0.0,
                                                             **options)))
  autocast = (torch.autocast(sync.device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
              else contextlib.nullcontext())

  def original():
    model.zero_grad(set_to_none=True)
    with autocast:
      loss = model(t_inputs, labels=t_labels, num_steps=(n, k), init_scale=0.0).loss
    loss.backward()
    sync.torch_sync()

  def ours():
    jax.block_until_ready(step(params, j_inputs, j_labels))

  return {"original": original, "huginn-jax": ours}


# --- output ----------------------------------------------------------------------------------------------------------

def fmt_rate(x: float | None) -> str:
  return "n/a" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:,.1f}")


def table(rows: list[dict]) -> str:
  lines = ["| work | original tok/s | huginn-jax tok/s | ratio | limit tok/s | original of limit | "
           "huginn-jax of limit |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['label']} | {fmt_rate(r['original_tokens_per_s'])} | {fmt_rate(r['huginn_jax_tokens_per_s'])}"
                 f" | {r['ratio']:.2f} | {fmt_rate(r['limit_tokens_per_s'])} | {r['original_of_limit']:.0%} | "
                 f"{r['huginn_jax_of_limit']:.0%} |")
  return "\n".join(lines)


def result_row(label: str, work: str, tok_s: dict[str, float], per_round: dict[str, list[float]], **extra) -> dict:
  return {"work": work, "label": label, "original_tokens_per_s": tok_s["original"],
          "huginn_jax_tokens_per_s": tok_s["huginn-jax"], "ratio": tok_s["huginn-jax"] / tok_s["original"],
          "rounds_tokens_per_s": per_round, **extra}


def timed_row(label: str, work: str, fns: dict, tokens: int, args, **fields) -> dict:
  """Times ``fns`` (one per implementation) alternately, prints the rounds and returns the table row for a call that
  processes ``tokens`` tokens of batch 1."""
  watch = OtherCpu()
  t = alternate(fns, args.rounds, args.repeats)
  tok_s = {impl: tokens / min(t[impl]) for impl in IMPLS}
  per_round = {impl: [tokens / x for x in t[impl]] for impl in IMPLS}
  row = result_row(label, work, tok_s, per_round, batch=1, other_cpu=watch.fraction(), **fields)
  print_rounds(label, per_round, row["other_cpu"])
  return row


def with_limit(row: dict, limit: float) -> dict:
  return {**row, "limit_tokens_per_s": limit, "original_of_limit": row["original_tokens_per_s"] / limit,
          "huginn_jax_of_limit": row["huginn_jax_tokens_per_s"] / limit}


def print_rounds(label: str, per_round: dict[str, list[float]], other_cpu: float | None) -> None:
  parts = [f"{impl} " + " / ".join(fmt_rate(x) for x in per_round[impl]) for impl in IMPLS]
  spread = max((max(v) / min(v) - 1) for v in per_round.values() if min(v) > 0)
  flag = " (rounds differ by more than 10%)" if spread > 0.10 else ""
  print(f"  {label}: tok/s per round: {'; '.join(parts)}{flag}; {busy_note(other_cpu)}", flush=True)


# --- profiles --------------------------------------------------------------------------------------------------------

TORCH_CATEGORIES = (
    ("attention", ("scaled_dot_product", "flash", "attention", "fmha", "sdpa")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear", "gemm",
                "cublas", "cutlass", "xmma")),
    ("copy/transfer", ("copy", "aten::cat", "aten::stack", "aten::clone", "contiguous", "aten::index", "memcpy",
                       "memset", "aten::to", "aten::_to_copy", "aten::embedding", "gather", "scatter")),
)


def torch_category(name: str) -> str:
  return perf.categorize(name, TORCH_CATEGORIES, default="other ops")


def profile_torch(torch, fn: Callable[[], None], directory: str, device, top: int = 15) -> str:
  """One more run of ``fn`` under torch.profiler; self time by category and the top ops."""
  import collections
  activities = [torch.profiler.ProfilerActivity.CPU]
  if device.type == "cuda":
    activities.append(torch.profiler.ProfilerActivity.CUDA)
  with torch.profiler.profile(activities=activities) as prof:
    fn()
  os.makedirs(directory, exist_ok=True)
  prof.export_chrome_trace(os.path.join(directory, "trace.json"))
  use_device = device.type == "cuda"
  ops = []
  for e in prof.key_averages():
    ms = (e.self_device_time_total if use_device else e.self_cpu_time_total) / 1e3
    if ms > 0:
      ops.append((e.key, ms, e.count))
  ops.sort(key=lambda o: -o[1])
  total = sum(ms for _, ms, _ in ops) or 1.0
  by_category = collections.defaultdict(float)
  for name, ms, _ in ops:
    by_category[torch_category(name)] += ms
  lines = [f"profile ({total:.1f} ms of {'device' if use_device else 'CPU'} self time in {directory}):"]
  for category, ms in sorted(by_category.items(), key=lambda kv: -kv[1]):
    lines.append(f"  {category:<16} {ms:>10.2f} ms  {ms / total:>6.1%}")
  lines.append(f"  top {min(top, len(ops))} operations:")
  for name, ms, count in ops[:top]:
    lines.append(f"    {ms:>10.2f} ms {ms / total:>6.1%} x{count:<5} [{torch_category(name)}] {name[:90]}")
  return "\n".join(lines)


def profile_pair(torch, name: str, fns: dict[str, Callable[[], None]], directory: str, device) -> None:
  print(f"\n== profile: {name} ==", flush=True)
  print("original (torch.profiler):")
  print(profile_torch(torch, fns["original"], os.path.join(directory, f"original_{name}"), device), flush=True)
  print("huginn-jax (jax.profiler):")
  jax_dir = os.path.join(directory, f"huginn_jax_{name}")
  with perf.trace(jax_dir):
    fns["huginn-jax"]()
  print(perf.summarize_trace(jax_dir), flush=True)


# --- main ------------------------------------------------------------------------------------------------------------

class OtherCpu:
  """CPU time that other processes took while this one ran, as a fraction of all the CPUs (from Linux's
  /proc/stat, steal time included; None elsewhere). Eager torch slows down far more than XLA when the CPUs are
  shared, so a busy machine skews the ratios, not only the speeds."""

  def __init__(self):
    self.start = self.sample()

  @staticmethod
  def sample():
    try:
      with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
      return None
    busy = sum(values) - values[3] - values[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK"), time.process_time(), time.perf_counter()

  def fraction(self) -> float | None:
    now = self.sample()
    if now is None or self.start is None:
      return None
    busy, own, wall = (a - b for a, b in zip(now, self.start))
    return max(busy - own, 0.0) / max(wall * (os.cpu_count() or 1), 1e-9)


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "cpu"


def busy_note(fraction: float | None) -> str:
  if fraction is None:
    return "other processes' CPU use unknown"
  note = f"other processes used {fraction:.0%} of the CPUs"
  return note + (" -- BUSY: these figures, the ratios too, are not the machine's" if fraction > 0.10 else "")


def main(argv=None) -> list[dict]:
  args = parser().parse_args(argv)
  s = setting(args)
  path = check_original_path(args.original)
  torch, transformers = import_torch()
  modeling, config_mod = import_original(path)

  backend = jax.default_backend()
  torch_gpu = torch.cuda.is_available()
  if (backend == "gpu") != torch_gpu:
    raise SystemExit(f"jax runs on {backend} but torch {'sees' if torch_gpu else 'sees no'} GPU: both must run on "
                     "the same device (install the CUDA builds of both, or neither).")
  device = torch.device("cuda" if torch_gpu else "cpu")
  dtype = args.dtype or ("bfloat16" if backend == "gpu" else "float32")
  sync = Sync(torch, device)

  info = _common.header("compare_original")
  info.update(torch=torch.__version__, transformers=transformers.__version__, torch_threads=torch.get_num_threads(),
              torch_device=torch.cuda.get_device_name() if torch_gpu else cpu_name(),
              cpu_count=os.cpu_count(), original_commit=original_commit(path), dtype=dtype,
              setting=dataclasses.asdict(s), python=platform.python_version(),
              time=datetime.datetime.now().isoformat(timespec="seconds"))
  info["load_avg_start"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  whole_run = OtherCpu()
  print(f"torch {info['torch']} ({info['torch_threads']} threads, {info['torch_device']}), transformers "
        f"{info['transformers']}, python {info['python']}, {info['cpu_count']} CPUs; original {path} at "
        f"{info['original_commit']}; {info['time']}; load average {_common.fmt(info['load_avg_start'], '{:.1f}')}",
        flush=True)
  print(f"shape: d={s.d_model}, {s.heads} heads of {s.d_model // s.heads}, MLP {s.mlp}, vocab {s.vocab}, "
        f"prelude/core/coda {'/'.join(map(str, s.layers))}, r={s.num_steps}; dtype {dtype}", flush=True)

  model32 = build_original(modeling, config_mod, torch, s, args.seed)
  rows: list[dict] = []
  with tempfile.TemporaryDirectory(prefix="huginn_compare_") as tmp:
    model32.save_pretrained(tmp, safe_serialization=True)
    config, params = hj.load(tmp, dtype=dtype)
    config.attention_impl = args.attention
    rng = np.random.default_rng(args.seed)

    # The first call of hj.generate in this process, before anything else of decoding is compiled.
    prompt = rng.integers(0, s.vocab, (1, s.prompt_len), np.int32)
    start = time.perf_counter()
    jax.block_until_ready(hj.generate(params, prompt, config=config, max_new_tokens=s.new_tokens,
                                      num_steps=s.num_steps, init_scale=0.0, cache="full",
                                      stop_ids=np.full((1,), -1, np.int32)).tokens)
    first_call = time.perf_counter() - start
    print(f"first call of hj.generate (batch 1, prompt {s.prompt_len}, {s.new_tokens} new, r={s.num_steps}, "
          f"compilation included): {first_call:.2f} s", flush=True)
    rows.append({"work": "first_call", "label": "first call of hj.generate", "seconds": first_call, "batch": 1})

    if dtype == "float32":
      config32, params32 = config, params
    else:
      config32, params32 = hj.load(tmp, dtype="float32")
    with jax.default_matmul_precision("float32"):  # no TF32 on a GPU: the check is of float32 arithmetic
      check = check_agreement(torch, model32, config32, params32, s, args.tolerance, args.seed)
    rows.append({"work": "check", **check})

    # Training keeps float32 weights (compute in dtype); inference runs with the weights in dtype, as loaded.
    train_config, train_params = config32.copy_and_resolve_references(), params32
    train_config.compute_dtype = dtype
    train_config.attention_impl = args.attention
    if dtype == "float32":
      model_infer = model32.to(device)
      model_train = model32
    else:
      import copy
      model_infer = copy.deepcopy(model32).to(device=device, dtype=getattr(torch, dtype))
      model_train = model32.to(device)
    # eval mode for both: with the depth given explicitly, training mode would do the same work (it only makes
    # the original sample the depth when none is given).
    model_infer.eval()
    model_train.eval()

  shapes = matmul_shapes(config, s)
  machine = measure_machine(torch, device, dtype, shapes, "before the timing", s.prefill_len)

  print(f"timing: {args.rounds} rounds alternating original and huginn-jax, best of {args.repeats} each", flush=True)
  if "prefill" in args.only:
    per_token = flops.forward_flops_per_token(config, s.prefill_len, s.num_steps)
    fns = prefill_fns(torch, sync, model_infer, config, params, s, rng)
    rows.append(timed_row(f"prefill, batch 1, {s.prefill_len} tokens, r={s.num_steps}", "prefill", fns,
                          s.prefill_len, args, seq_len=s.prefill_len, flops_per_token=per_token))
    if args.profile:
      profiled_prefill = fns

  if "decode" in args.only:
    context = s.prompt_len + s.new_tokens / 2
    for batch in args.batches:
      fns = decode_fns(torch, transformers, sync, model_infer, config, params, s, batch, rng)
      watch = OtherCpu()
      t = alternate(fns, args.rounds, args.repeats)
      steps = s.new_tokens - 1
      per_round = {impl: [batch * steps / max(f - o, 1e-9) for f, o in zip(t[f"{impl} N"], t[f"{impl} 1"])]
                   for impl in IMPLS}
      tok_s = {impl: batch * steps / max(min(t[f"{impl} N"]) - min(t[f"{impl} 1"]), 1e-9) for impl in IMPLS}
      moved = flops.decode_bytes_per_step(config, num_steps=s.num_steps, batch=batch, context_len=context,
                                          param_dtype=dtype, cache_dtype=dtype)
      step_flops = batch * flops.decode_flops_per_token(config, context, s.num_steps)
      agree = float(np.mean(fns["original N"].tokens == fns["huginn-jax N"].tokens))
      label = f"cached greedy decode, batch {batch}, prompt {s.prompt_len}, {s.new_tokens} new (prefill excluded)"
      rows.append(result_row(label, "decode", tok_s, per_round, batch=batch, prompt_len=s.prompt_len,
                             new_tokens=s.new_tokens, bytes_per_step=moved, flops_per_step=step_flops,
                             greedy_tokens_agree=agree, other_cpu=watch.fraction(),
                             end_to_end_tokens_per_s={impl: batch * s.new_tokens / min(t[f"{impl} N"])
                                                      for impl in IMPLS}))
      print_rounds(label, per_round, rows[-1]["other_cpu"])
      print(f"    greedy tokens equal in {agree:.0%} of places; {moved / 1e6:,.0f} MB read per step at least",
            flush=True)
      if args.profile and batch == 1:
        profiled_decode = {"original": fns["original N"], "huginn-jax": fns["huginn-jax N"]}

  if "train" in args.only:
    n, k = s.depth
    per_token = flops.train_flops_per_token(config, s.train_len, n, k)
    fns = train_fns(torch, sync, model_train, train_config, train_params, s, dtype, args.remat, rng)
    rows.append(timed_row(f"loss + gradients, {s.train_len} tokens, n={n} + k={k}", "train", fns, s.train_len,
                          args, seq_len=s.train_len, n=n, k=k, remat=args.remat, flops_per_token=per_token))
    if args.profile:
      profiled_train = fns

  machine = best_machine(machine, measure_machine(torch, device, dtype, shapes, "after the timing", s.prefill_len))
  rate, read = machine["gemm_flops"], machine["read_bytes_per_s"]
  rows = [with_limit(r, limit_tokens_per_s(r, rate, read)) if "ratio" in r else r for r in rows]
  rows.append({"work": "machine", **machine})
  timed = [r for r in rows if "ratio" in r]
  other = whole_run.fraction()
  rows.append({"work": "other_cpu", "other_cpu": other, "load_avg_end": os.getloadavg()[0]
               if hasattr(os, "getloadavg") else None})
  print(f"during the whole run, {busy_note(other)} (load average {_common.fmt(info['load_avg_start'], '{:.1f}')} "
        f"at the start)")
  print(f"\n{dtype}, {info['device']} ({backend}); ratio = huginn-jax / original; limit: the machine's measured GEMM "
        f"rate ({rate / 1e9:,.0f} GFLOP/s) and read bandwidth ({read / 1e9:,.1f} GB/s), the better of the two "
        "measurements")
  print(table(timed))
  print(f"first call of hj.generate (compilation included): {first_call:.1f} s")
  for r in rows:
    _common.emit(info, r, args.json)

  if args.profile:
    print("\n(profiles of one more run each; the decode profile covers the whole generation, its prefill included)")
    if "prefill" in args.only:
      profile_pair(torch, "prefill", profiled_prefill, args.profile, device)
    if "decode" in args.only and 1 in args.batches:
      profile_pair(torch, "decode_b1", profiled_decode, args.profile, device)
    if "train" in args.only:
      profile_pair(torch, "train", profiled_train, args.profile, device)
  return rows


if __name__ == "__main__":
  main()
