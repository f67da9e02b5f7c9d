"""Config machinery: strict build from layered mappings, coercion, recipes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tokenlm.core.config import build, load_yaml, recipe_section, to_dict
from tokenlm.core.errors import ConfigError
from tokenlm.data.features import FeatureConfig
from tokenlm.data.splits import SplitConfig


@dataclass(frozen=True)
class Example:
    steps: int = 10
    lr: float = 1e-3
    scale: float | None = None
    sizes: tuple[int, ...] = (16, 64)
    name: str = "run"
    shuffle: bool = True

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError("steps must be >= 0")


def test_defaults_and_layering():
    assert build(Example) == Example()
    assert build(Example, None, {}) == Example()
    config = build(Example, {"steps": 5, "name": "a"}, {"steps": 7})
    assert config.steps == 7 and config.name == "a"  # later layers win


def test_none_falls_through():
    # an unset command-line option (None) does not override the recipe
    config = build(Example, {"steps": 5, "scale": 2.0}, {"steps": None, "scale": None, "lr": None})
    assert config.steps == 5 and config.scale == 2.0 and config.lr == 1e-3


def test_unknown_key_names_the_known_ones():
    with pytest.raises(ConfigError) as info:
        build(Example, {"stpes": 5}, where="train")
    message = str(info.value)
    assert "train.stpes" in message
    for name in ("steps", "lr", "scale", "sizes", "name", "shuffle"):
        assert name in message


def test_dashes_become_underscores():
    assert build(FeatureConfig, {"n-mels": 32}).n_mels == 32


def test_list_and_string_to_tuple():
    assert build(Example, {"sizes": [1, 2, 3]}).sizes == (1, 2, 3)
    assert build(Example, {"sizes": "8,32"}).sizes == (8, 32)  # from the command line
    assert build(Example, {"sizes": ["4", "5"]}).sizes == (4, 5)
    assert isinstance(build(Example, {"sizes": [1]}).sizes, tuple)
    with pytest.raises(ConfigError, match="takes a list"):
        build(Example, {"sizes": 5})


def test_strings_and_ints_to_numbers():
    config = build(Example, {"steps": "12", "lr": "3e-4", "scale": "2"})
    assert config.steps == 12 and isinstance(config.steps, int)
    assert config.lr == 3e-4 and isinstance(config.lr, float)
    assert config.scale == 2.0 and isinstance(config.scale, float)  # Optional[float]
    lr = build(Example, {"lr": 1}).lr
    assert lr == 1.0 and isinstance(lr, float)
    with pytest.raises(ConfigError, match="takes a number"):
        build(Example, {"steps": "ten"}, where="train")
    with pytest.raises(ConfigError, match="takes a number"):
        build(Example, {"lr": "fast"})


def test_strings_to_bools():
    assert build(Example, {"shuffle": "no"}).shuffle is False
    assert build(Example, {"shuffle": "True"}).shuffle is True
    assert build(Example, {"shuffle": False}).shuffle is False
    with pytest.raises(ConfigError, match="true/false"):
        build(Example, {"shuffle": "maybe"})


def test_validation_errors_become_config_errors():
    with pytest.raises(ConfigError, match="train: steps must be"):
        build(Example, {"steps": -1}, where="train")
    with pytest.raises(ConfigError, match="features: .*f_max"):
        build(FeatureConfig, {"f_max": "12000"}, where="features")
    with pytest.raises(ConfigError, match="split"):
        build(SplitConfig, {"val_fraction": 0.6, "test_fraction": 0.6}, where="split")


def test_real_configs():
    features = build(FeatureConfig, {"f_max": "7600", "patch_hop": None, "n_mels": "40"})
    assert features.f_max == 7600.0 and features.patch_hop is None and features.n_mels == 40
    assert build(SplitConfig, {"test_fold": "3"}).test_fold == 3
    assert to_dict(features)["f_max"] == 7600.0
    assert to_dict(Example())["sizes"] == (16, 64)


def test_load_yaml_and_sections(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("features:\n  n_mels: 32\n  f_max: 7000\nsplit:\ndata: [1, 2]\n")
    assert load_yaml(recipe)["features"] == {"n_mels": 32, "f_max": 7000}
    assert recipe_section(recipe, "features") == {"n_mels": 32, "f_max": 7000}
    assert recipe_section(recipe, "split") == {}  # empty section
    assert recipe_section(recipe, "absent") == {}
    assert recipe_section(None, "features") == {}
    with pytest.raises(ConfigError, match="must be a mapping"):
        recipe_section(recipe, "data")
    assert build(FeatureConfig, recipe_section(recipe, "features"), {"n_mels": 16}).n_mels == 16

    with pytest.raises(ConfigError, match="recipe not found"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("features: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}
