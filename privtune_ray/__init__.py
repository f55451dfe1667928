"""privtune-ray: simulate privacy-preserving split fine-tuning of language models on Ray.

The data path, top to bottom: device (bottom model) -> mechanism -> message -> top model -> coordinator.
"""

__version__ = "0.1.0"
