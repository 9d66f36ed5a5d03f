"""adafocus-pl: AdaFocus (Wang et al., ICCV 2021) as a PyTorch Lightning + Hydra experiment suite."""

from adafocus_pl.utils.quiet import quiet_third_party
from adafocus_pl.version import __version__

quiet_third_party()  # library notices a user cannot act on (adafocus_pl.utils.quiet)

__all__ = ["__version__"]
