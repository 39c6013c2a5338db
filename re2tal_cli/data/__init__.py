"""Video data: PyAV decoding with keyframe seeking (`video`), frame sampling (`sampling`), tensor transforms and
augmentations (`transforms`), dataset formats and loaders (`datasets`), converters (`convert`), the synthetic dataset
(`synthetic`), dataset summaries (`info`) and feature extraction (`extract`).

Submodules are imported on use (`from re2tal_cli.data.video import read_frames`): importing this package costs
nothing, so `re2tal --help` stays fast.
"""
