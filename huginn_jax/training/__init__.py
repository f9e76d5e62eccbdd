"""Training: the recurrence sampler, the optimizer, the sharded train step and the loop."""
