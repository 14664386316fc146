"""The registry of distillation methods, by name (``distill.method`` in a config).

Its own module so that ``DistillConfig`` can check a method name without importing the
distillers (which import the config).
"""
from dtkd.registry import Registry

DISTILLERS: Registry = Registry("distiller")
