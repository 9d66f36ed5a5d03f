"""The AdaFocus network (``nn.Module``s only): backbones, patches, policy pi, classifier f_C, AdaFocusNet.

Kept light: submodules are imported where used (``from adafocus_pl.models.adafocus import AdaFocusNet``).
"""

from adafocus_pl.models.registry import create_backbone, list_backbones, register_backbone

__all__ = ["create_backbone", "list_backbones", "register_backbone"]
