"""Build callbacks and loggers from their config groups, refusing entries that would silently do nothing."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig


def instantiate_group(group: DictConfig | None, key: str) -> list:
    """Instantiate every entry of a ``callbacks`` or ``logger`` group.

    An entry without ``_target_`` is an error (a typo such as ``logger.wandb.project=x`` with no wandb logger
    selected would otherwise log nothing: the entry builds no object and is silently skipped).
    """
    objects = []
    if not group:
        return objects
    if not isinstance(group, DictConfig):
        raise TypeError(f"config `{key}` must be a mapping of name -> {{_target_: ...}}, got {type(group).__name__}")
    for name, entry in group.items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ValueError(
                f"config `{key}.{name}` has no `_target_`, so it would be ignored. Select the group that defines "
                f"it (e.g. `{key}=default` or `+{key}@{key}.{name}=...`), or remove `{key}.{name}` from your overrides."
            )
        objects.append(instantiate(entry))
    return objects
