"""Learning-rate schedules: linear warmup, then constant ("trapezoid", the original's), linear or cosine decay,
with a linear cooldown over the last ``cooldown_steps``."""

from __future__ import annotations

import ml_collections
import optax

SCHEDULES = ("trapezoid", "constant", "linear", "cosine")


def make_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The schedule of an ``optimizer`` config section (fields lr, min_lr, warmup_steps, cooldown_steps, schedule)."""
  lr, min_lr = float(opt.lr), float(opt.min_lr)
  warmup, cooldown = int(opt.warmup_steps), int(opt.cooldown_steps)
  if opt.schedule not in SCHEDULES:
    raise ValueError(f"Unknown optimizer.schedule {opt.schedule!r}; choose one of {SCHEDULES}.")
  if warmup < 0 or cooldown < 0:
    raise ValueError(f"warmup_steps ({warmup}) and cooldown_steps ({cooldown}) must be >= 0.")
  if warmup + cooldown > total_steps:
    raise ValueError(f"warmup_steps + cooldown_steps = {warmup + cooldown} exceeds the {total_steps} train steps; "
                     "shorten them or train longer.")
  middle = total_steps - warmup - cooldown
  if opt.schedule in ("trapezoid", "constant"):
    body = optax.constant_schedule(lr)
  elif opt.schedule == "linear":
    body = optax.linear_schedule(lr, min_lr, max(middle, 1))
  else:
    body = optax.cosine_decay_schedule(lr, max(middle, 1), alpha=min_lr / lr if lr else 0.0)
  end_of_body = body(middle) if opt.schedule in ("linear", "cosine") else lr
  pieces, boundaries = [], []
  if warmup:
    pieces.append(optax.linear_schedule(0.0, lr, warmup))
    boundaries.append(warmup)
  pieces.append(body)
  if cooldown:
    boundaries.append(warmup + middle)
    pieces.append(optax.linear_schedule(float(end_of_body), min_lr, cooldown))
  return optax.join_schedules(pieces, boundaries) if boundaries else body
