"""Checkpoint I/O: HF safetensors <-> our params (``hf``), raw safetensors streaming (``safetensors_io``)."""
