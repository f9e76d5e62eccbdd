"""huginn-jax: the depth-recurrent Huginn-0125 language model in JAX / Flax NNX."""

from huginn_jax.api import ForwardOutput, abstract_params, cross_entropy, forward, init, logical_axes, loss
from huginn_jax.config import from_hf_config, get_config, num_params, to_hf_config

__all__ = [
    "ForwardOutput", "abstract_params", "cross_entropy", "forward", "from_hf_config", "get_config", "init",
    "logical_axes", "loss", "num_params", "to_hf_config",
]
__version__ = "0.1.0"

from huginn_jax.checkpoint.io import export_hf, load, save  # noqa: E402

__all__ += ["export_hf", "load", "save"]

from huginn_jax.decoding import GenerationOutput, generate  # noqa: E402

__all__ += ["GenerationOutput", "generate"]

from huginn_jax.decoding import DiffusionOutput, generate_diffusion  # noqa: E402

__all__ += ["DiffusionOutput", "generate_diffusion"]
