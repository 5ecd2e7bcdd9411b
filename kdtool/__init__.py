"""kdtool: recipes that compress speech recognition models by knowledge distillation."""

__version__ = "0.1.0"
