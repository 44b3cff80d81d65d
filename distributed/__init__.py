"""Distributed execution, below the stages: process groups for data-parallel training (`ddp`) and the Ray
edge that runs a stage's work units on actors (`ray_harvest`). Nothing here knows what a stage computes."""
