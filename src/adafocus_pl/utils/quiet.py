"""Third-party notices that tell a user of this suite nothing they can act on, silenced by exact message.

Each line below is a library talking about itself (a deprecated call inside it, a product tip) or about something
this suite does on purpose (frozen parts in eval mode); every other warning still shows. (fvcore's
"``torch.jit.script`` is deprecated", raised when ``fvcore.nn`` is imported, is silenced around that one import in
:mod:`adafocus_pl.evaluation.flops`.)
"""

from __future__ import annotations

import logging
import warnings

NOTICES = (
    (r"'set_vital' is deprecated", UserWarning),  # torchdata's StatefulDataLoader calls a deprecated torch API
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),  # Lightning 2.6 on torch 2.14
    # the stages keep their frozen parts (BN statistics, dropout) in eval mode on purpose
    (r"Found \d+ module\(s\) in eval mode at the start of training", Warning),
    # Stage II optimises by hand: its mid-epoch checkpoint holds the state after the step, which a resume continues
    (r"Using ModelCheckpoint with manual optimization and every_n_train_steps", Warning),
)


class _DropProductTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def quiet_third_party() -> None:
    """Install the filters (idempotent: ``warnings`` keeps one entry per filter, the log filter is added once)."""
    for message, category in NOTICES:
        warnings.filterwarnings("ignore", message=message, category=category)
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropProductTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropProductTips())
