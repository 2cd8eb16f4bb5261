"""Owns the teachers, which make the (noise, label, image) pairs a student learns from: EDM
(`edm`), the teachers by kind (`registry`: `empirical`, `trained`, `external`) and pair generation
(`generate`). Importing the package imports none of them.
"""
