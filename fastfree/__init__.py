"""fastfree: a performance-engineered engine for data-free meta-learning (FREE, CVPR 2024)."""

__version__ = "0.1.0"
