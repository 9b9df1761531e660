"""Config loading: defaults, clear errors naming key and file, overrides, stage field selection."""

from pathlib import Path

import pytest

from cocu_core.config import ConfigError, PipelineConfig, config_from_dict, fingerprint, load_config, parse_override

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_configs_load():
    toy = load_config(ROOT / "configs" / "toy.yaml")
    real = load_config(ROOT / "configs" / "cc3m.yaml")
    assert toy.data.source == "toyworld" and toy.encoder.model == "cocu-tiny"
    assert real.encoder.model == "ViT-B-16" and real.encoder.pretrained == "openai"


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  image_sise: 64\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "data.image_sise" in msg and "unknown key" in msg and str(p) in msg


def test_wrong_type_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("curation:\n  n_neighbours: eight\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "curation.n_neighbours" in str(e.value) and str(p) in str(e.value) and "eight" in str(e.value)


def test_cross_section_check_names_both_keys():
    with pytest.raises(ConfigError, match=r"encoder.toy_patch_size \(12\) must divide data.image_size \(64\)"):
        config_from_dict({"data": {"image_size": 64}, "encoder": {"toy_vision": "vit", "toy_patch_size": 12}}, "x.yaml")
    with pytest.raises(ConfigError, match=r"toy_vision 'resnet' needs data.image_size \(48\) to be a multiple of 32"):
        config_from_dict({"data": {"image_size": 48}}, "x.yaml")
    config_from_dict({"data": {"image_size": 48}, "encoder": {"toy_vision": "vit", "toy_patch_size": 8}}, "x.yaml")
    with pytest.raises(ConfigError, match="encoder.toy_resnet_layers"):
        config_from_dict({"encoder": {"toy_resnet_layers": [1, 1, 1]}}, "x.yaml")


def test_out_of_range_and_bad_literal(tmp_path):
    with pytest.raises(ConfigError, match="data.toyworld.p_noise"):
        config_from_dict({"data": {"toyworld": {"p_noise": 1.5}}}, "x.yaml")
    with pytest.raises(ConfigError, match="curation.variant"):
        config_from_dict({"curation": {"variant": "v9"}}, "x.yaml")


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_overrides_and_empty_file(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    cfg = load_config(p, parse_override("curation.variant=v2"))
    assert cfg.curation.variant == "v2" and cfg == PipelineConfig(curation={"variant": "v2"})
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("novalue")


def test_fields_for_is_the_cache_basis():
    a = PipelineConfig()
    b = PipelineConfig(curation={"variant": "v2"})
    fields = ["data.image_size", "encoder"]
    assert fingerprint(a.fields_for(fields)) == fingerprint(b.fields_for(fields))
    assert fingerprint(a.fields_for(["curation.variant"])) != fingerprint(b.fields_for(["curation.variant"]))
    assert a.fields_for(["data.image_size"]) == {"data.image_size": 64}


def test_bg_threshold_is_per_dataset_or_refused_for_several_background_datasets():
    ev = {"datasets": ["voc", "context", "toy"]}
    with pytest.raises(ConfigError) as e:
        config_from_dict({"eval": {**ev, "bg_threshold": 0.5}}, "x.yaml")
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and "'eval.bg_threshold'" in lines[1] and "['voc', 'context']" in lines[1]
    assert "one per dataset" in lines[1]
    cfg = config_from_dict({"eval": {**ev, "bg_threshold": {"voc": 0.9, "context": 0.3}}}, "x.yaml")
    assert cfg.eval.bg_threshold == {"voc": 0.9, "context": 0.3}
    assert config_from_dict({"eval": {"datasets": ["voc", "toy"], "bg_threshold": 0.5}}).eval.bg_threshold == 0.5
    with pytest.raises(ConfigError, match=r"\['toy'\] have no background class"):
        config_from_dict({"eval": {**ev, "bg_threshold": {"toy": 0.5}}}, "x.yaml")
    with pytest.raises(ConfigError, match="eval.bg_threshold"):
        config_from_dict({"eval": {"datasets": ["voc"], "bg_threshold": {"voc": 1.5}}}, "x.yaml")
