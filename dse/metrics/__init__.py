"""Metrics of a trained student: image quality, size and speed."""
