"""Tests for the extractor registry of dse.metrics.extractors: one list of names that the quality measurement,
torch-fidelity's registry and the weight lookups agree on (config's copy: tests/test_registries.py; the
digits classifier and the Inception extractor at work: test_fid.py)."""

from __future__ import annotations

import numpy as np
import pytest
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dse.assets import digits_classifier_file
from dse.assets.inception import NETWORK_COMPAT, NETWORK_FID_HELPER
from dse.errors import DseError
from dse.metrics.extractors import DIGITS_EXTRACTOR, EXTRACTORS, register_extractors
from dse.metrics.fid import image_quality


def test_the_inception_names_are_the_networks_the_weight_lookup_answers_with():
    # dse.assets.inception.inception_weights(...).network is used as the extractor name
    assert tuple(EXTRACTORS) == (NETWORK_COMPAT, NETWORK_FID_HELPER, DIGITS_EXTRACTOR)


def test_every_registered_name_is_known_to_torch_fidelity():
    register_extractors()
    for name, spec in EXTRACTORS.items():
        assert name in FEATURE_EXTRACTORS_REGISTRY
        if spec.cls is not None:  # dse's own; None: torch-fidelity's
            assert FEATURE_EXTRACTORS_REGISTRY[name] is spec.cls


def test_the_digits_classifier_is_cached_under_its_extractor_name():
    assert digits_classifier_file().stem == DIGITS_EXTRACTOR


def test_image_quality_refuses_a_name_outside_the_registry():
    with pytest.raises(DseError) as info:
        image_quality(np.zeros((4, 8, 8, 1), np.uint8), "digits", extractor="clip")
    assert str(info.value).endswith("known: auto, " + ", ".join(EXTRACTORS))
