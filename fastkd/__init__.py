"""fastkd: fast, reproducible knowledge distillation for image classification.

`import fastkd` never imports ffcv or nvidia.dali; backends load them on demand.
"""
__version__ = "0.1.0"
