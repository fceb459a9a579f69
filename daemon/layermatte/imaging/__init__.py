"""Pixels: formats, image files, the matting pipeline, refinement and decontamination."""
