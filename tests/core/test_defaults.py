"""Every memory-bank default is one value: the YAML (``model=fapm``), ``MemorySettings`` and the
constructors that receive the key agree, and every name list of the settings is the code's."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Callable

import pytest

from fapm.lightning.memory_module import MemoryBankModule
from fapm.models.adaptive import AdaptiveCoreset
from fapm.models.alignment import ALIGN_MODES, Aligner
from fapm.models.coreset import GreedyKCenter
from fapm.models.detector import MemoryDetector
from fapm.models.feature_store import FeatureStore
from fapm.models.knn import FaissKNN
from fapm.models.neighbourhood import BORDERS
from fapm.models.scorer import Scorer
from fapm.models.scoring import IMAGE_SCORES, MaxScore, PatchCoreWeightedScore, make_image_score
from fapm.models.streams import STREAMS, ConcatLayers, SeparateLayers, make_streams
from fapm.settings import MODEL_FAMILIES, MemorySettings, SearchSettings
from tests.conftest import compose_config


def default(fn: Callable[..., Any], name: str) -> Any:
    return inspect.signature(fn).parameters[name].default


#: settings key -> the constructor defaults that must equal it, as ``(callable, parameter)``, or a
#: check of a constructor's behaviour where its default is "None = the configured choice".
CONSTRUCTOR_DEFAULTS: dict[str, list[tuple[Callable[..., Any], str]]] = {
    "grid": [(MemoryDetector, "grid")],
    "layer_weights": [(MemoryDetector, "layer_weights")],
    "coreset_ratio": [(AdaptiveCoreset, "ratio")],
    "projection_dim": [(GreedyKCenter, "projection_dim")],
    "adaptive": [(AdaptiveCoreset, "adaptive")],
    "d_th": [(AdaptiveCoreset, "d_th")],
    "adaptive_factor": [(AdaptiveCoreset, "factor")],
    "distance_scale": [(AdaptiveCoreset, "distance_scale")],
    "threshold_mode": [(AdaptiveCoreset, "threshold_mode")],
    "memory_cap": [(AdaptiveCoreset, "memory_cap")],
    "coreset_chunk_mb": [(GreedyKCenter, "chunk_mb")],
    "coreset_device_chunk_mb": [(GreedyKCenter, "device_chunk_mb")],
    "k": [(MemoryDetector, "k"), (Scorer, "k")],
    "neighbourhood": [(MemoryDetector, "neighbourhood"), (Scorer, "neighbourhood")],
    "neighbourhood_border": [(MemoryDetector, "neighbourhood_border"), (Scorer, "neighbourhood_border")],
    "align_resolution": [(Aligner, "resolution")],
    "align_min_confidence": [(Aligner, "min_confidence")],
    "align_fallback_neighbourhood": [(Aligner, "fallback_radius")],
    "num_neighbors": [(PatchCoreWeightedScore, "num_neighbors"), (make_image_score, "num_neighbors")],
    "map_upsample": [(MemoryDetector, "map_upsample"), (Scorer, "map_upsample")],
    "blur_sigma": [(MemoryDetector, "blur_sigma"), (Scorer, "blur_sigma")],
    "fusion_upsample": [(make_streams, "upsample"), (ConcatLayers, "mode")],
    "timing_warmup": [(MemoryBankModule, "timing_warmup")],
}
#: keys whose constructor default is ``None`` ("the default choice"): what that choice is
NONE_MEANS: dict[str, Callable[[Any], bool]] = {
    "fusion": lambda v: default(MemoryDetector, "streams") is None and v == "separate"
    and isinstance(STREAMS[v]("bilinear"), SeparateLayers),
    "image_score": lambda v: default(Scorer, "image_score") is None and v == "max"
    and isinstance(make_image_score(v), MaxScore),
    "feature_dtype": lambda v: default(FeatureStore, "dtype") is None and v == "float32",  # None = as extracted
    "feature_storage": lambda v: default(MemoryDetector, "feature_host") is False and v == "device",
    "align": lambda v: default(MemoryDetector, "aligner") is None and v == "none",
}
#: settings keys that no constructor receives (names and the family, the search's and the coreset's own nodes)
NOT_CONSTRUCTOR_ARGUMENTS = {"family", "name", "search", "coreset"}


@pytest.fixture(scope="module")
def yaml_model(tmp_path_factory) -> dict[str, Any]:
    from omegaconf import OmegaConf

    cfg = compose_config("train", ["model=fapm"], tmp_path_factory.mktemp("cfg"))
    return OmegaConf.to_container(cfg.model, resolve=True)  # type: ignore[return-value]


def test_every_settings_key_is_covered() -> None:
    keys = {f.name for f in dataclasses.fields(MemorySettings)}
    covered = set(CONSTRUCTOR_DEFAULTS) | set(NONE_MEANS) | NOT_CONSTRUCTOR_ARGUMENTS
    assert keys == covered, f"add the new key to this test: {sorted(keys ^ covered)}"


def test_yaml_equals_settings_equals_constructors(yaml_model) -> None:
    settings = MemorySettings()
    wrong = []
    for key in CONSTRUCTOR_DEFAULTS.keys() | NONE_MEANS.keys():
        value = getattr(settings, key)
        yaml_value = yaml_model[key]
        if (list(value) if isinstance(value, tuple) else value) != yaml_value:
            wrong.append(f"{key}: settings {value!r}, fapm.yaml {yaml_value!r}")
        if key in NONE_MEANS:
            if not NONE_MEANS[key](value):
                wrong.append(f"{key}: settings {value!r} is not what the constructors' None builds")
            continue
        for fn, param in CONSTRUCTOR_DEFAULTS[key]:
            got = default(fn, param)
            if (tuple(got) if isinstance(got, (list, tuple)) else got) != value:
                wrong.append(f"{key}: settings {value!r}, {fn.__qualname__}({param}={got!r})")
    assert not wrong, "\n".join(wrong)


def test_search_settings_equal_the_faiss_constructor(yaml_model) -> None:
    settings = SearchSettings()
    assert yaml_model["search"]["backend"] == settings.backend
    for key in ("factory", "nlist", "nprobe", "ef_search", "pq_m", "use_gpu", "temp_memory_mb"):
        assert getattr(settings, key) == default(FaissKNN, key), key


def _literal(cls: type, key: str) -> tuple[str, ...]:
    hint = typing.get_type_hints(cls)[key]
    return tuple(a for a in typing.get_args(hint) if isinstance(a, str))


@pytest.mark.parametrize(
    "key, names",
    [
        ("fusion", tuple(STREAMS)),
        ("image_score", tuple(IMAGE_SCORES)),
        ("neighbourhood_border", BORDERS),
        ("align", ALIGN_MODES),
        ("threshold_mode", typing.get_args(typing.get_type_hints(AdaptiveCoreset.__init__)["threshold_mode"])),
        ("distance_scale", typing.get_args(typing.get_type_hints(AdaptiveCoreset.__init__)["distance_scale"])),
    ],
)
def test_settings_name_lists_are_the_codes(key, names) -> None:
    assert sorted(_literal(MemorySettings, key)) == sorted(names)


def test_model_families_and_data_types_are_the_settings_classes() -> None:
    from fapm.settings import DATA_TYPES

    for family, cls in MODEL_FAMILIES.items():
        assert _literal(cls, "family") == (family,)
    for kind, cls in DATA_TYPES.items():
        assert _literal(cls, "type") == (kind,)


def test_every_search_backend_of_the_settings_builds_its_own_index() -> None:
    from fapm.builders import build_search

    made = {}
    for backend in _literal(SearchSettings, "backend"):
        factory = build_search(SearchSettings(backend=backend))
        made[backend] = getattr(factory, "func", factory).__name__
    assert made == {"torch": "TorchKNN", "faiss": "FaissKNN", "auto": "AutoKNN"}
