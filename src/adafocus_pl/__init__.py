"""adafocus-pl: AdaFocus (Wang et al., ICCV 2021) as a PyTorch Lightning + Hydra experiment suite."""

from adafocus_pl.version import __version__

__all__ = ["__version__"]
