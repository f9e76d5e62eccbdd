"""Synthetic reasoning tasks where depth matters, for demonstrating and testing test-time compute scaling."""
