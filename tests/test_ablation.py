"""The ablation's aggregation (stuff/thing split, mean and std over seeds, Table-3 markdown), its config section,
its input checks and command-line shorthands; one real evaluate_stage run feeds the aggregation its real file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cocu_core.ablation import (AblationError, aggregate, check_inputs, needed_curations, ordering_note, run_metrics,
                                table_markdown)
from cocu_core.config import ConfigError, config_from_dict, load_config
from cocu_core.io import read_json

ROOT = Path(__file__).resolve().parent.parent
STUFF = {"sky": 10.0, "grass": 20.0, "water": None, "sand": 30.0, "snow": 0.0, "road": 40.0, "wall": 50.0,
         "forest": 60.0}
THINGS = {"ball": 1.0, "box": 2.0, "tent": 3.0, "boat": 4.0, "kite": None, "car": 5.0, "tree": 6.0, "person": 9.0}


def results(miou: float, top1: float, stuff=STUFF, things=THINGS, painting: float = 9.5) -> dict:
    return {"segmentation": {"toy": {"mIoU": miou, "painting_mIoU": painting, "per_class_iou": {**stuff, **things}}},
            "classification": {"toy": {"top1": top1, "top5": 90.0, "images": 10}}}


def test_run_metrics_split_stuff_and_thing_classes_by_kind():
    m = run_metrics(results(17.5, 25.0))
    # stuff: (10+20+30+0+40+50+60)/7 (water absent from truth and prediction: None, left out); things: 30/7
    assert m["mIoU"] == 17.5 and m["top1"] == 25.0 and m["painting_mIoU"] == 9.5
    assert m["stuff_mIoU"] == pytest.approx(30.0)
    assert m["thing_mIoU"] == pytest.approx(30.0 / 7)
    no_things = run_metrics(results(1.0, 2.0, things=dict.fromkeys(THINGS)))
    assert no_things["thing_mIoU"] is None and no_things["stuff_mIoU"] == pytest.approx(30.0)


def test_aggregate_mean_and_sample_std_over_seeds_and_the_table():
    rows = [{"arm": "baseline", "seed": 0, **run_metrics(results(10.0, 20.0))},
            {"arm": "baseline", "seed": 1, **run_metrics(results(14.0, 30.0, stuff={**STUFF, "sky": 80.0}))},
            {"arm": "cocu", "seed": 0, **run_metrics(results(20.0, 40.0))},
            {"arm": "cocu", "seed": 1, **run_metrics(results(21.0, 40.0))}]
    agg = aggregate(rows, ["baseline", "cocu", "v1"])
    assert list(agg) == ["baseline", "cocu"]  # an arm without runs has no row
    b = agg["baseline"]
    assert b["seeds"] == [0, 1]
    assert b["mIoU"]["mean"] == 12.0 and b["mIoU"]["std"] == pytest.approx(math.sqrt(8.0))  # ddof 1: (4+4)/1
    assert b["mIoU"]["se"] == pytest.approx(2.0)  # sqrt(8) / sqrt(2 seeds)
    assert b["top1"]["mean"] == 25.0 and b["top1"]["std"] == pytest.approx(math.sqrt(50.0))
    assert b["stuff_mIoU"]["values"] == pytest.approx([30.0, 40.0])  # sky 10 -> 80 adds 70/7
    assert agg["cocu"]["mIoU"]["std"] == pytest.approx(math.sqrt(0.5))
    assert agg["cocu"]["thing_mIoU"]["std"] == 0.0
    table = table_markdown(agg, {"oracle": "not installed"})
    lines = table.splitlines()
    assert lines[0] == "| arm | mIoU | painting mIoU | stuff mIoU | thing mIoU | zero-shot top-1 | seeds |"
    assert lines[2].startswith("| baseline") and "| 12.0 ± 2.0 | 9.5 ± 0.0 | 35.0 ± 5.0 | 4.3 ± 0.0 | 25.0 ± 5.0 | 2 |" in lines[2]
    assert "| 20.5 ± 0.5 |" in lines[3]  # cells are mean ± standard error: sqrt(0.5) / sqrt(2)
    assert lines[4].startswith("| oracle") and lines[4].count("not available") == 5
    note = "\n".join(ordering_note(agg))
    assert "CoCu − baseline mIoU: +8.50 points" in note and "2.83: more than the seeds' spread" in note
    assert "cocu (20.5) > baseline (12.0)" in note
    # cocu's painting row is 9.5 in both seeds (SE 0): 20.5 - 9.5 = +11.00, above it by more than cocu's SE 0.50
    assert ("cocu − its painting row (top class over the whole image): +11.00 points; the larger standard error of "
            "the two is 0.50: above it by more than that.") in note
    one = aggregate(rows[:1], ["baseline"])
    assert one["baseline"]["mIoU"]["std"] is None and "| 10.0 |" in table_markdown(one)


@pytest.fixture(scope="module")
def toy_val(tmp_path_factory):
    from cocu_core.config import ToyWorldConfig
    from cocu_core.toyworld.generate import generate_split

    root = tmp_path_factory.mktemp("ablation_val")
    generate_split(root, "val", 4, ToyWorldConfig(n_web=0, n_train=0, n_val=4, seed=5), workers=1)
    return root / "val"


def test_metrics_from_a_real_evaluate_stage_results_file(toy_val, tmp_path):
    from cocu_core.stages.evaluate import evaluate_stage
    from cocu_core.model import create_model
    from cocu_core.toyworld.concepts import CONCEPTS
    from cocu_core.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("groupvit-toy", vision_width=64, vision_heads=2, text_width=64, text_heads=2,
                         proj_hidden=128, embed_dim=64).eval()
    ck = tmp_path / "model.pt"
    save_checkpoint(ck, {"model_name": "groupvit-toy", "model_config": model.config.to_dict(),
                         "model": model.state_dict()})
    cfg = config_from_dict({"workdir": str(tmp_path / "w"), "eval": {"datasets": ["toy"], "panels": 0,
                                                                     "roots": {"toy": str(toy_val)}}})
    evaluate_stage(cfg, ck, out_dir=tmp_path / "ev", progress=False, log=lambda m: None)
    res = read_json(tmp_path / "ev" / "results.json")
    iou = res["segmentation"]["toy"]["per_class_iou"]
    assert set(iou) == {c.name for c in CONCEPTS}  # every evaluated class has a kind
    m = run_metrics(res)
    for kind, key in (("stuff", "stuff_mIoU"), ("thing", "thing_mIoU")):
        vals = [iou[c.name] for c in CONCEPTS if c.kind == kind and iou[c.name] is not None]
        assert (m[key] is None) == (not vals)
        if vals:
            assert m[key] == pytest.approx(float(np.mean(vals)))
    assert m["mIoU"] == res["segmentation"]["toy"]["mIoU"]
    assert m["top1"] == res["classification"]["toy"]["top1"]


def test_config_section_defaults_validation_and_toy_yaml():
    cfg = config_from_dict({})
    assert cfg.ablation.arms == ["baseline", "v1", "v2", "v3", "cocu", "topk-release", "oracle"]
    assert cfg.ablation.seeds == [0, 1] and cfg.ablation.out == "ablation"
    with pytest.raises(ConfigError, match="unknown arm"):
        config_from_dict({"ablation": {"arms": ["baseline", "cocoa"]}})
    with pytest.raises(ConfigError, match="no repeats"):
        config_from_dict({"ablation": {"seeds": [0, 0]}})
    with pytest.raises(ConfigError, match="unknown key 'ablation.epoch'"):
        config_from_dict({"ablation": {"epoch": 3}})
    toy = load_config(ROOT / "configs" / "toy.yaml")
    assert len(toy.ablation.seeds) >= 2 and toy.ablation.epochs >= 1 and "oracle" in toy.ablation.arms
    for name, field in type(toy.ablation).model_fields.items():
        assert field.description, name


def test_curated_variants_each_arm_needs():
    assert needed_curations(["baseline", "oracle"]) == []
    assert needed_curations(["v2", "cocu", "topk-release", "baseline"]) == ["v2", "cocu"]


def test_missing_inputs_are_one_line_naming_folder_and_command(toy_val, tmp_path):
    import shutil

    from cocu_core.io import write_manifest

    cfg = config_from_dict({"workdir": str(tmp_path / "w"), "ablation": {"arms": ["baseline", "v3"]}})
    with pytest.raises(AblationError, match="no toy world val split in .*cocu run -c my.yaml"):
        check_inputs(cfg, cfg.ablation.arms, "my.yaml")
    shutil.copytree(toy_val, tmp_path / "w" / "toyworld" / "val")
    with pytest.raises(AblationError, match="no finished download"):
        check_inputs(cfg, cfg.ablation.arms, "my.yaml")
    write_manifest(tmp_path / "w" / "download", "download", "x", {}, {})
    with pytest.raises(AblationError) as e:
        check_inputs(cfg, cfg.ablation.arms, "my.yaml")
    assert str(tmp_path / "w" / "curate" / "v3") in str(e.value)
    assert "cocu run -c my.yaml --set curation.variant=v3" in str(e.value) and "arm(s) v3" in str(e.value)
    check_inputs(cfg, ["baseline"], "my.yaml")  # the caption-noun arm needs no archive
    url = config_from_dict({"workdir": str(tmp_path / "w"), "data": {"source": "url_list", "url_list": "x.tsv"}})
    with pytest.raises(ConfigError, match="toy world's ground truth"):
        check_inputs(url, ["baseline"])


def test_cli_shorthands_become_config_overrides(tmp_path):
    import argparse

    from cocu_core.cli import UserError, load_config_args
    from flows.cli import ablation_overrides

    args = argparse.Namespace(config=str(ROOT / "configs" / "toy.yaml"), set=["ablation.epochs=2"],
                              arms="baseline, topk-release", seeds="3,4,5")
    args.set = ablation_overrides(args)
    cfg = load_config_args(args)
    assert cfg.ablation.arms == ["baseline", "topk-release"] and cfg.ablation.seeds == [3, 4, 5]
    assert cfg.ablation.epochs == 2
    with pytest.raises(UserError, match="whole numbers"):
        ablation_overrides(argparse.Namespace(set=None, arms=None, seeds="0,x"))
    with pytest.raises(UserError, match="at least one arm"):
        ablation_overrides(argparse.Namespace(set=None, arms=" , ", seeds=None))


def test_concept_maps_are_soft_mixtures_of_group_cosines(toy_val):
    from cocu_core.evaluation.datasets import get_dataset
    from cocu_core.evaluation.segmentation import SegSettings, concept_maps, pixel_groups, to_model_input
    from cocu_core.model import create_model

    torch.manual_seed(1)
    model = create_model("groupvit-toy", vision_width=64, vision_heads=2, text_width=64, text_heads=2,
                         proj_hidden=128, embed_dim=64).eval()
    s = get_dataset("toy", toy_val)[0]
    settings = SegSettings(resize_long=None, resize_short=None, crop=64, stride=64, bg_thresh=None)
    texts = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    groups, maps = concept_maps(model, s.image, texts, settings)
    assert groups.shape == s.label.shape and maps.shape == (3, *s.label.shape)
    with torch.no_grad():
        feats = model.encode_image(to_model_input(s.image, (64, 64), torch.device("cpu")), return_attn=True)
        soft = pixel_groups(feats.attn_soft, model.patch_grid(64, 64), (64, 64))[0]
        sim = torch.nn.functional.normalize(feats.groups[0].float(), dim=-1) @ texts.T
    assert torch.equal(groups, soft.argmax(0))
    expected = torch.einsum("ghw,gk->khw", soft, sim)
    assert torch.allclose(maps, expected, atol=1e-5)
    assert float(maps.min()) >= float(sim.min()) - 1e-5 and float(maps.max()) <= float(sim.max()) + 1e-5
