"""vitbench: benchmark your vision transformers against timm, Keras and official implementations."""
__version__ = "0.1.0"
