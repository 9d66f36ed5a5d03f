"""Training stages: each its own LightningModule over the shared AdaFocusNet (paper Sec. 3.2)."""
