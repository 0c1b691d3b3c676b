"""trust-unlearn: make text-to-image diffusion models forget a concept, robustly and selectively."""

__version__ = "0.1.0"
