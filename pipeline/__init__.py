"""Orchestration: the end-to-end recipe and the Ray edge that turns stage functions into distributed work."""
