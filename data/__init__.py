"""nuScenes data: the synthetic generator, devkit access and the sample index."""
