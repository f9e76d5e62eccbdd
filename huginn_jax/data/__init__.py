"""Data: random-access token sources, the grain pipeline, and the tokenizing/packing tool."""
