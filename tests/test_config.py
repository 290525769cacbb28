import json
import os
from pathlib import Path

import pytest

from hemaflow import config as cfg


@pytest.mark.parametrize("profile", cfg.available_profiles())
def test_every_profile_loads_and_validates(profile):
    config = cfg.load_config(profile)
    assert config.profile == profile
    assert config.data.image_size >= 16
    assert config.model.backbones


def test_profiles_cover_quickstart_cpu_gpu():
    assert {"quickstart", "cpu", "gpu"} <= set(cfg.available_profiles())


def test_user_file_overrides_profile(tmp_path: Path):
    path = tmp_path / "my.yaml"
    path.write_text("profile: cpu\ntrain:\n  epochs: 3\n")
    config = cfg.load_config(path=path)
    assert config.profile == "cpu"
    assert config.train.epochs == 3
    assert config.data.image_size == cfg.load_config("cpu").data.image_size


def test_unknown_key_names_key_and_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load_config(path=path)
    assert "train.epochz: unknown key" in str(err.value)
    assert str(path) in str(err.value)


def test_wrong_type_and_impossible_value_are_both_listed(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  image_size: big\ntrain:\n  epochs: 0\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load_config(path=path)
    message = str(err.value)
    assert "data.image_size: expected int, got 'big'" in message
    assert "train.epochs: must be at least 1" in message
    assert str(path) in message and "\n" not in message


def test_a_wrong_type_hides_no_impossible_value_in_the_same_section(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  image_size: big\n  split:\n    val: 2\ntune: 5\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load_config(path=path)
    message = str(err.value)
    assert "data.image_size: expected int" in message
    assert "data.split.val: must be between 0 and 1" in message
    assert "tune: expected a mapping, got int" in message


def test_impossible_value(tmp_path: Path):
    with pytest.raises(cfg.ConfigError, match=r"tune.max_trials: the tuner budget"):
        cfg.load_config("quickstart", overrides={"tune.max_trials": 0})
    with pytest.raises(cfg.ConfigError, match=r"data.split.val \+ test"):
        cfg.load_config("quickstart", overrides={"data.split": {"val": 0.5, "test": 0.5}})


def test_literal_choices_are_enforced():
    with pytest.raises(cfg.ConfigError, match=r"augment.mix.kind: 'blend' is not one of"):
        cfg.load_config("quickstart", overrides={"augment.mix.kind": "blend"})
    with pytest.raises(cfg.ConfigError, match=r"ensemble.views: 3 is not one of 1, 2, 4, 8"):
        cfg.load_config("quickstart", overrides={"ensemble.views": 3})


def test_unknown_profile_is_an_error():
    with pytest.raises(cfg.ConfigError, match="unknown profile 'huge'"):
        cfg.load_config("huge")


def test_not_yaml(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(cfg.ConfigError, match="not valid YAML"):
        cfg.load_config(path=path)


def test_parse_override_reads_yaml_values():
    assert cfg.parse_override("train.epochs=3") == ("train.epochs", 3)
    assert cfg.parse_override("model.backbones=[a, b]") == ("model.backbones", ["a", "b"])
    with pytest.raises(cfg.ConfigError, match="expected KEY=VALUE"):
        cfg.parse_override("train.epochs")


def test_overriding_one_nested_key_keeps_its_siblings():
    base = cfg.load_config("quickstart")
    changed = cfg.load_config("quickstart", overrides={"augment.policy.blur.p": 0.9})
    assert changed.augment.policy.blur.p == 0.9
    assert changed.augment.policy.blur.strength == base.augment.policy.blur.strength
    assert changed.augment.bmk_policy == base.augment.bmk_policy


@pytest.mark.parametrize("profile", cfg.available_profiles())
def test_json_round_trip_is_the_same_config(profile):
    config = cfg.load_config(profile, overrides={"augment.balance_to": 50, "train.epochs": 2})
    assert cfg.from_json(config.to_json()) == config
    assert cfg.from_json(config.to_json()).to_json() == config.to_json()


def test_from_json_validates_again_and_names_the_origin():
    with pytest.raises(cfg.ConfigError, match=r"^config: not valid JSON"):
        cfg.from_json("{train: 1")
    with pytest.raises(cfg.ConfigError, match=r"^config: must be a JSON object"):
        cfg.from_json("[1, 2]")
    edited = cfg.load_config().to_dict()
    edited["train"]["epochs"] = 0
    with pytest.raises(cfg.ConfigError, match=r"train.epochs: must be at least 1"):
        cfg.from_json(json.dumps(edited))
    edited["train"]["epochz"] = 3
    with pytest.raises(cfg.ConfigError) as err:
        cfg.from_json(json.dumps(edited), origin="run parameter config")
    assert str(err.value).startswith("run parameter config: invalid configuration")
    assert "train.epochz: unknown key" in str(err.value)


def test_site_profiles_come_first(tmp_path: Path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "quickstart.yaml").write_text("seed: 7\ntrain: {epochs: 1}\n")
    (site / "lab.yaml").write_text("model: {backbones: [small_cnn]}\n")
    monkeypatch.setenv(cfg.PROFILES_ENV, f"{tmp_path / 'missing'}{os.pathsep}{site}")
    assert {"lab", "quickstart", "cpu", "gpu"} <= set(cfg.available_profiles())
    assert cfg.load_config("quickstart").seed == 7
    assert cfg.load_config("lab").model.backbones == ["small_cnn"]
    assert cfg.load_config("lab").profile == "lab"
    monkeypatch.delenv(cfg.PROFILES_ENV)
    assert cfg.load_config("quickstart").seed != 7
    with pytest.raises(cfg.ConfigError, match="unknown profile 'lab'"):
        cfg.load_config("lab")
