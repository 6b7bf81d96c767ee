"""Data: synthetic nuScenes, NuInteract captions, the verifiable manifest, training datasets."""
