"""Owns the teachers, which make the (noise, label, image) pairs a student learns from: EDM
(`edm`), the teachers by kind (`registry`: `empirical`, `trained`, `external`, `diffusers` in `hf`),
pair generation (`generate`) and converting a teacher given as code (`convert`). Importing the
package imports none of them.
"""
