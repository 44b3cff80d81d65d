"""Synthetic nuScenes: a small simulated world written as a genuine nuScenes v1.0 dataset."""
