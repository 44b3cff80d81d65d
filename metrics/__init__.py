"""Evaluation metrics (planning, detection, map) as pure functions, outside the models."""
