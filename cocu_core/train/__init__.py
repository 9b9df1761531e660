"""GroupViT pre-training: losses (``losses``), optimiser and schedule (``optim``), data (``data``), loop.

Kept import-free on purpose: ``import cocu_core.train`` must stay cheap (no torch/timm/torchvision
at package import); import the submodule you need.
"""
