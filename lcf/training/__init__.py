"""Training with Lightning: the LightningModule, the run driver and its settings.

Import ``lcf.training.module`` / ``lcf.training.run`` explicitly: they import Lightning.
"""
