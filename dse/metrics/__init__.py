"""Owns the measurements of a trained student: image quality (fid.py with extractors.py), speed (latency.py,
export.py) and its samples (samples.py); where their weights come from is dse.assets' business."""
