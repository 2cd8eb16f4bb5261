"""dse: find the best tiny Diffusion Transformer for a parameter budget by distillation.

The public API; everything else is an implementation module. Importing dse is cheap (no torch).
"""

from dse.config import Geometry, StudentArch, StudyConfig, load_study
from dse.errors import DseError
from dse.sizing import count_params, enumerate_candidates, parse_budget, propose

__version__ = "0.1.0"

__all__ = [
    "DseError",
    "Geometry",
    "StudentArch",
    "StudyConfig",
    "count_params",
    "enumerate_candidates",
    "load_study",
    "parse_budget",
    "propose",
    "__version__",
]
