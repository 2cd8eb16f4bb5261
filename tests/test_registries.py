"""The light name tables of `dse.config` (what a space file may name, checked without importing
torch) equal the registries of the modules that own the plug-ins, so adding a plug-in without its
name, or a name without its plug-in, fails here."""

from __future__ import annotations

from dse import config


def test_setups_are_the_setup_registry():
    from dse.distill.setups import SETUPS

    assert config.KNOWN_SETUPS == tuple(SETUPS)


def test_losses_are_the_loss_registry_lpips_included():
    from dse.distill.losses import LOSSES

    assert config.KNOWN_LOSSES == tuple(LOSSES)


def test_extractors_are_auto_plus_the_extractor_registry():
    from dse.metrics.extractors import AUTO_EXTRACTORS, EXTRACTORS

    assert config.KNOWN_EXTRACTORS == ("auto", *EXTRACTORS)
    assert set(AUTO_EXTRACTORS.values()) <= set(EXTRACTORS)  # "auto" resolves to a registered one
    assert set(AUTO_EXTRACTORS) <= set(config.GEOMETRIES)


def test_teacher_kinds_are_the_teacher_registry_plus_a_given_store():
    from dse.teacher.registry import TEACHERS

    assert config.TEACHER_KINDS == (*TEACHERS, "store")


def test_searches_are_the_executors():
    from dse.executor import SEARCHES

    assert SEARCHES == config.SEARCHES


def test_data_sets_are_the_loader_registry_with_the_loaders_geometry():
    from dse.data.datasets import DATASETS

    assert set(config.GEOMETRIES) == set(DATASETS)


def test_lpips_nets_and_splits_are_their_owners():
    from dse.assets.lpips import TRUNKS
    from dse.data.datasets import SPLITS

    assert config.LPIPS_NETS == tuple(TRUNKS)
    assert config.SPLITS == SPLITS
