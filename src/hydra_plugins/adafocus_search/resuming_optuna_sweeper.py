"""Hydra finds sweepers only in the ``hydra_plugins`` package: this one is Optuna's sweeper with
:class:`adafocus_pl.search.ResumingOptunaSweeperImpl` inside (conf/hparams_search selects it). Hydra imports every
module here when an app starts, so nothing heavy is imported before the sweeper is built."""

from __future__ import annotations

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the `search` extra is not installed: no sweeper here (conf/hparams_search says what to do)
    OptunaSweeper = None

if OptunaSweeper is not None:

    class ResumingOptunaSweeper(OptunaSweeper):
        """Optuna's sweeper that resumes its study: see :class:`adafocus_pl.search.ResumingOptunaSweeperImpl`."""

        def __init__(self, *args, **kwargs) -> None:  # the arguments of OptunaSweeper (its config's keys)
            from adafocus_pl.search import ResumingOptunaSweeperImpl

            self.sweeper = ResumingOptunaSweeperImpl(*args, **kwargs)
