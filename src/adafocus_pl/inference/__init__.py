"""Inference: the fast offline path (``fast``), the speed benchmark (``benchmark``) and prediction on a video file
(``predict``)."""
