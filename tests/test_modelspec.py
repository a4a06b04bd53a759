import json

import pytest

from romsim.errors import RomsimInputError
from romsim.modelspec import load_model, shipped_models

PUBLISHED = {  # total parameters as published
    "llama-3.2-1b": 1.24e9,
    "llama-3.2-3b": 3.21e9,
    "llama-3.1-8b": 8.03e9,
    "llama-3-8b": 8.03e9,
    "smollm2-135m": 134.5e6,
    "smollm2-360m": 361.8e6,
}


@pytest.mark.parametrize("name,count", PUBLISHED.items())
def test_published_parameter_counts(name, count):
    m = load_model(name)
    assert abs(m.n_params / count - 1) < 0.005


def test_all_shipped_models_load():
    assert set(PUBLISHED) <= set(shipped_models())


def test_user_config_json(tmp_path):
    cfg = json.loads(shipped_models()["smollm2-135m"].read_text())
    cfg["num_hidden_layers"] = 4
    p = tmp_path / "tiny" / "config.json"
    p.parent.mkdir()
    p.write_text(json.dumps(cfg))
    m = load_model(str(p))
    assert m.name == "tiny" and m.n_layers == 4


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"num_hidden_layers": -1}, "num_hidden_layers"),
        ({"model_type": "bert"}, "model_type"),
        ({"num_key_value_heads": 4}, "num_key_value_heads"),
    ],
)
def test_bad_config_names_the_field(tmp_path, patch, field):
    cfg = json.loads(shipped_models()["smollm2-135m"].read_text())
    cfg.update(patch)
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg))
    with pytest.raises(RomsimInputError) as e:
        load_model(str(p))
    assert e.value.field == field
