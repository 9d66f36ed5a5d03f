from adafocus_pl.version import __version__
