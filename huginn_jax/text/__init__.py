"""Text in and out: the tokenizer and chat format (``tokenizer``) and the interactive commands (``interactive``).

Kept apart from ``huginn_jax.decoding``, which works on token ids only.
"""
