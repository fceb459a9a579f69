"""layermatte: local AI background removal and alpha matting."""
__version__ = "0.1.0"
