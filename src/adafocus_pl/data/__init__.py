"""Real-video data path: list files, TSN segment sampling, clip transforms, datasets and the datamodule.

Kept light on purpose: import the submodules you need (``adafocus_pl.data.datamodule`` pulls in Lightning,
``adafocus_pl.data.datasets`` PyAV and torchvision).
"""

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov")

__all__ = ["VIDEO_EXTENSIONS"]
