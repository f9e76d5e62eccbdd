"""Latent trajectories: the core state of each token across iterations, projected on its top principal components.

Runs the recurrence one iteration at a time on a few prompts, keeps the latent state of every token after every
iteration, and per token projects its trajectory on the first two principal components (numpy SVD of the
[iterations, d_model] states). Shows the convergence to fixed points, orbits and drifts of the paper's analysis;
also records the norm of the step-to-step change ||s_{i+1} - s_i|| / ||s_i|| against iterations. Writes
``results.json``, ``trajectories.png`` and ``convergence.png`` to ``--out``.

  python experiments/latent_trajectories.py --checkpoint huginn-0125-jax --tokenizer tokenizer.json \
      --out outputs/latents --num-steps 64        # ~1 minute on one GPU, estimated (full model, 4 prompts)
  python experiments/latent_trajectories.py --checkpoint tests/data/tiny --out /tmp/latents --num-steps 8
                                                  # ~5 seconds on CPU (the tiny fixture)
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiment_utils as eu  # noqa: E402


def latent_states(params, config, tokens: np.ndarray, num_steps: int, init_scale: float, seed: int) -> np.ndarray:
  """Latent states [num_steps + 1, B, S, d] (index 0 = the initial state), one jitted loop."""
  import jax
  import jax.numpy as jnp
  from huginn_jax import api
  from huginn_jax.model import iterate

  class Record:
    """A ``StepObserver`` writing the state after every iteration into a [num_steps + 1, B, S, d] buffer."""

    def init(self, s0):
      return jnp.zeros((num_steps + 1,) + s0.shape, jnp.float32).at[0].set(s0.astype(jnp.float32))

    def running(self, states):
      return None

    def update(self, states, step, s, cache):
      return states.at[step + 1].set(s.astype(jnp.float32)), cache

    def finished(self, states):
      return jnp.bool_(False)

  @jax.jit
  def run(params, tokens, key):
    model = api.model_from_params(params, config)
    p = api.prepare(model, tokens, key=key, init_scale=init_scale)
    return iterate(model.core, p.state, p.e, p.positions, p.mask, num_steps, observer=Record()).observed

  return np.asarray(run(params, jnp.asarray(tokens, jnp.int32), jax.random.key(seed)))


def pca(traj: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Projection [T, k] of a trajectory [T, d] on its top-k principal components, and their explained variance."""
  centred = traj - traj.mean(0, keepdims=True)
  _, sing, vt = np.linalg.svd(centred, full_matrices=False)
  var = sing ** 2
  explained = var[:k] / max(var.sum(), 1e-30)
  return centred @ vt[:k].T, explained


def main(argv=None) -> dict:
  parser = eu.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]), prompts=2)
  parser.add_argument("--num-steps", type=int, default=64, help="iterations to trace")
  parser.add_argument("--init-scale", type=float, default=1.0, help="scale of the random initial state")
  parser.add_argument("--tokens-per-prompt", type=int, default=4, help="tokens (the last ones) plotted per prompt")
  args = parser.parse_args(argv)
  if args.num_steps < 2:
    parser.error("--num-steps must be at least 2 to have a trajectory.")
  config, params = eu.load(args.checkpoint)
  rows = eu.prompts(args, config)
  width = min(len(r) for r in rows)
  tokens = np.array([r[:width] for r in rows])
  states = latent_states(params, config, tokens, args.num_steps, args.init_scale, args.seed)  # [T+1, B, S, d]
  steps = np.arange(1, args.num_steps + 1)
  change = np.linalg.norm(states[1:] - states[:-1], axis=-1) / np.maximum(np.linalg.norm(states[:-1], axis=-1), 1e-30)
  n_tok = min(args.tokens_per_prompt, width)
  plt = eu.pyplot()
  fig, axes = plt.subplots(len(rows), n_tok, figsize=(3 * n_tok, 3 * len(rows)), squeeze=False)
  per_token = []
  for b in range(len(rows)):
    for j, t in enumerate(range(width - n_tok, width)):
      proj, explained = pca(states[:, b, t])
      ax = axes[b, j]
      ax.plot(proj[:, 0], proj[:, 1], "-", lw=0.8, color="0.6")
      ax.scatter(proj[:, 0], proj[:, 1], c=np.arange(len(proj)), cmap="viridis", s=10)
      ax.set_title(f"prompt {b}, token {t} (id {tokens[b, t]})", fontsize=8)
      ax.set_xlabel(f"PC1 ({explained[0]:.0%})", fontsize=7)
      ax.set_ylabel(f"PC2 ({explained[1]:.0%})" if len(explained) > 1 else "PC2", fontsize=7)
      per_token.append({"prompt": b, "position": t, "token": int(tokens[b, t]),
                        "pca": proj.tolist(), "explained_variance": explained.tolist(),
                        "relative_change": change[:, b, t].tolist()})
  fig.suptitle("Latent trajectories (PCA per token; colour = iteration)")
  fig.tight_layout()
  fig.savefig(os.path.join(_mkdir(args.out), "trajectories.png"), dpi=110)
  plt.close(fig)

  mean_change = change.mean(axis=(1, 2))
  fig2, ax = plt.subplots(figsize=(5, 3.5))
  for b in range(len(rows)):
    for t in range(width):
      ax.semilogy(steps, change[:, b, t], color="C0", alpha=0.15, lw=0.7)
  ax.semilogy(steps, mean_change, color="C3", lw=2, label="mean over tokens")
  ax.set_xlabel("iteration")
  ax.set_ylabel("||s_i - s_{i-1}|| / ||s_{i-1}||")
  ax.legend()
  results = {"checkpoint": args.checkpoint, "num_steps": args.num_steps, "init_scale": args.init_scale,
             "num_prompts": len(rows), "prompt_len": width, "steps": steps.tolist(),
             "mean_relative_change": mean_change.tolist(), "tokens": per_token}
  eu.write(args.out, results, fig2, "convergence.png")
  print(f"{'iteration':>9} {'mean rel. change':>17}")
  for i in sorted({0, len(steps) // 4, len(steps) // 2, len(steps) - 1}):
    print(f"{steps[i]:>9} {mean_change[i]:>17.3e}")
  return results


def _mkdir(path: str) -> str:
  os.makedirs(path, exist_ok=True)
  return path


if __name__ == "__main__":
  main()
