"""Real-video data path, in pieces: list files (``listfile``: records, ``VideoList``, class names), storage
(``storage``: frame folders or video files, with the ``decode_cache``), TSN segment sampling (``sampling``), clip
transforms (``transforms``), the clip dataset and the evaluation path (``datasets``), the grouped data config
(``options``) and the datamodule (``datamodule``).

Kept light on purpose: import the submodules you need (``adafocus_pl.data.datamodule`` pulls in Lightning,
``adafocus_pl.data.storage`` PyAV and torchvision).
"""

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov")

__all__ = ["VIDEO_EXTENSIONS"]
