"""Evaluation harness adapters."""
