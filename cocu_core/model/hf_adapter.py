"""Hugging Face ``transformers.GroupViTModel`` weights in and out of our GroupViT.

The two models compute the same function (GV's); they differ in layout: HF keeps q/k/v as separate Linears
where we fuse them (self-attention qkv, grouping k/v), and names modules differently. The mapping below is
rule-based on our state-dict keys, so every tensor is accounted for in both directions.

HF has no multi-label temperature and no drop-path; on export both (and our config's other non-HF fields) are
kept as extra ``cocu_*`` keys in config.json, which HF carries as plain attributes and ignores, so
``load_hf_groupvit(export_hf(m))`` rebuilds ``m`` exactly. A plain HF checkpoint loads with drop_path 0 and
the multi-label temperature at its initial value (override with ``load_hf_groupvit(folder, **overrides)``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import torch

from cocu_core.compat import ensure_torchvision
from cocu_core.errors import CocuError
from cocu_core.io import write_bytes_atomic, write_json_atomic
from cocu_core.model.groupvit import GroupViT, GroupViTConfig, ModelConfigError
from cocu_core.model.layers import ACTIVATIONS

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_NAME = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
_EXTRA_CONFIG = "cocu_config"
_EXTRA_ML_SCALE = "cocu_multi_label_logit_scale"
_KEEP_FROM_EXTRA = ("name", "drop_path_rate", "gumbel_tau", "gumbel")  # fields HF has no slot for


class HFGroupViTError(ValueError, CocuError):
    """A folder or config that is not a loadable Hugging Face GroupViT; the message names the file."""


# --------------------------------------------------------------------------- key mapping

_BLOCK_RULES = [
    (r"norm1\.(.+)", [r"layer_norm1.\1"]),
    (r"norm2\.(.+)", [r"layer_norm2.\1"]),
    (r"attn\.qkv\.(.+)", [r"self_attn.q_proj.\1", r"self_attn.k_proj.\1", r"self_attn.v_proj.\1"]),
    (r"attn\.proj\.(.+)", [r"self_attn.out_proj.\1"]),
    (r"(mlp\..+)", [r"\1"]),
]
_GROUPING_RULES = [
    (r"pre_assign_attn\.attn\.q\.(.+)", [r"pre_assign_attn.attn.q_proj.\1"]),
    (r"pre_assign_attn\.attn\.kv\.(.+)", [r"pre_assign_attn.attn.k_proj.\1", r"pre_assign_attn.attn.v_proj.\1"]),
    (r"pre_assign_attn\.attn\.proj\.(.+)", [r"pre_assign_attn.attn.out_proj.\1"]),
    (r"assign\.q\.(.+)", [r"assign.q_proj.\1"]),
    (r"assign\.kv\.(.+)", [r"assign.k_proj.\1", r"assign.v_proj.\1"]),
    (r"(.+)", [r"\1"]),
]
_TOP_RULES = [
    (r"text\.token_embedding\.weight", ["text_model.embeddings.token_embedding.weight"]),
    (r"text\.positional_embedding", ["text_model.embeddings.position_embedding.weight"]),
    (r"text\.ln_final\.(.+)", [r"text_model.final_layer_norm.\1"]),
    (r"visual\.patch_embed\.(.+)", [r"vision_model.embeddings.patch_embeddings.projection.\1"]),
    (r"visual\.patch_norm\.(.+)", [r"vision_model.embeddings.layernorm.\1"]),
    (r"visual\.pos_embed", ["vision_model.embeddings.position_embeddings"]),
    (r"visual\.norm\.(.+)", [r"vision_model.layernorm.\1"]),
    (r"visual\.stages\.(\d+)\.group_token", [r"vision_model.encoder.stages.\1.group_token"]),
    (r"visual\.stages\.(\d+)\.group_projector\.(.+)", [r"vision_model.encoder.stages.\1.group_projector.\2"]),
    (r"image_proj\.(.+)", [r"visual_projection.\1"]),
    (r"text_proj\.(.+)", [r"text_projection.\1"]),
    (r"logit_scale", ["logit_scale"]),
]


def _apply(rules: list[tuple[str, list[str]]], key: str, prefix: str = "") -> Optional[list[str]]:
    for pattern, targets in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return [prefix + m.expand(t) for t in targets]
    return None


def hf_keys_for(key: str) -> list[str]:
    """Why: our state-dict key -> the HF key(s) it holds (several = concatenated along dim 0)."""
    out = _apply(_TOP_RULES, key)
    if out is None and (m := re.fullmatch(r"text\.blocks\.(\d+)\.(.+)", key)):
        out = _apply(_BLOCK_RULES, m.group(2), f"text_model.encoder.layers.{m.group(1)}.")
    if out is None and (m := re.fullmatch(r"visual\.stages\.(\d+)\.blocks\.(\d+)\.(.+)", key)):
        out = _apply(_BLOCK_RULES, m.group(3), f"vision_model.encoder.stages.{m.group(1)}.layers.{m.group(2)}.")
    if out is None and (m := re.fullmatch(r"visual\.stages\.(\d+)\.grouping\.(.+)", key)):
        out = _apply(_GROUPING_RULES, m.group(2), f"vision_model.encoder.stages.{m.group(1)}.downsample.")
    if out is None:
        raise KeyError(f"no Hugging Face name for parameter {key!r}")
    return out


def _mapped_keys(model: GroupViT) -> list[tuple[str, list[str]]]:
    return [(k, hf_keys_for(k)) for k in model.state_dict() if k != "multi_label_logit_scale"]


def hf_state_dict(model: GroupViT) -> dict[str, torch.Tensor]:
    """Why: our weights under HF GroupViTModel names (fused projections split), ready for safetensors."""
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, names in _mapped_keys(model):
        parts = sd[key].chunk(len(names), dim=0) if len(names) > 1 else (sd[key],)
        for name, t in zip(names, parts):
            out[name] = t.detach().clone().contiguous()
    return out


def state_dict_from_hf(model: GroupViT, hf_sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Why: HF tensors -> our state dict for `model`, refusing missing, surplus or misshapen tensors."""
    hf_sd = {k: v for k, v in hf_sd.items() if not k.endswith("position_ids")}  # non-persistent HF buffer
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for key, names in _mapped_keys(model):
        absent = [n for n in names if n not in hf_sd]
        if absent:
            missing.extend(absent)
            continue
        t = torch.cat([hf_sd[n] for n in names], dim=0) if len(names) > 1 else hf_sd[names[0]]
        if t.shape != own[key].shape:
            raise HFGroupViTError(f"{source}: {names[0]} has shape {tuple(t.shape)}, the config implies "
                                  f"{tuple(own[key].shape) if len(names) == 1 else 'a part of ' + str(tuple(own[key].shape))}")
        out[key] = t.to(own[key].dtype)
        used.update(names)
    surplus = sorted(set(hf_sd) - used)
    if missing or surplus:
        raise HFGroupViTError(f"{source} does not match its config: missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected {surplus[:5]}{' ...' if len(surplus) > 5 else ''}")
    out["multi_label_logit_scale"] = own["multi_label_logit_scale"].clone()
    return out


# --------------------------------------------------------------------------- configs

def _square(value: Any, what: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise HFGroupViTError(f"vision_config.{what} {list(value)} is not square; only square inputs are supported")
        value = value[0]
    return int(value)


def _ratio(hidden: int, inner: int, what: str) -> float:
    ratio = inner / hidden
    if int(hidden * ratio) != inner:
        raise HFGroupViTError(f"{what} {inner} is not expressible as a ratio of the width {hidden}")
    return ratio


def _act(name: Any, what: str) -> str:
    if name not in ACTIVATIONS:
        raise HFGroupViTError(f"{what} {name!r} is not supported; expected one of {sorted(ACTIVATIONS)}")
    return str(name)


def _hf_config_object(hf_config: Any):
    """Why: a dict (config.json) becomes transformers' GroupViTConfig, which supplies HF's defaults."""
    if isinstance(hf_config, dict):
        ensure_torchvision()
        from transformers import GroupViTConfig as HFConfig

        if hf_config.get("model_type") not in (None, "groupvit"):
            raise HFGroupViTError(f"config has model_type {hf_config.get('model_type')!r}; expected 'groupvit'")
        return HFConfig(**{k: v for k, v in hf_config.items() if k not in ("model_type", "transformers_version")})
    if getattr(hf_config, "model_type", None) != "groupvit":
        raise HFGroupViTError(f"not a GroupViT config: model_type {getattr(hf_config, 'model_type', None)!r}")
    return hf_config


def config_from_hf(hf_config: Any) -> GroupViTConfig:
    """Why: our GroupViTConfig for an HF GroupViTConfig (object or config.json dict), refusing what we can't run."""
    hf = _hf_config_object(hf_config)
    v, t = hf.vision_config, hf.text_config
    depths = [int(d) for d in v.depths]
    n = len(depths)
    tokens = [int(g) for g in v.num_group_tokens]
    outputs = [int(g) for g in v.num_output_groups]
    if len(tokens) != n or len(outputs) < n - 1:
        raise HFGroupViTError(f"vision_config: {n} stages need {n} num_group_tokens and {n} num_output_groups, "
                              f"got {tokens} and {outputs}")
    for i in range(1, n):
        if tokens[i] > 0 and tokens[i - 1] > 0 and outputs[i - 1] != tokens[i - 1]:
            raise HFGroupViTError(f"vision_config: num_output_groups[{i - 1}]={outputs[i - 1]} must equal "
                                  f"num_group_tokens[{i - 1}]={tokens[i - 1]} (HF's group projector reads those tokens)")
    if float(v.layer_norm_eps) != float(t.layer_norm_eps):
        raise HFGroupViTError(f"vision and text layer_norm_eps differ ({v.layer_norm_eps} vs {t.layer_norm_eps})")
    eos = getattr(t, "eos_token_id", None)
    if eos not in (None, 2, int(t.vocab_size) - 1):
        raise HFGroupViTError(f"text_config.eos_token_id {eos} is not the largest id ({int(t.vocab_size) - 1}): "
                              "our EOT pooling (argmax id) would pool elsewhere")
    ratio = v.assign_mlp_ratio
    ratio = tuple(float(r) for r in ratio) if isinstance(ratio, (list, tuple)) else (float(ratio), float(ratio))
    fields: dict[str, Any] = dict(
        name="hf-groupvit",
        image_size=_square(v.image_size, "image_size"),
        patch_size=_square(v.patch_size, "patch_size"),
        in_chans=int(v.num_channels),
        vision_width=int(v.hidden_size),
        vision_heads=int(v.num_attention_heads),
        depths=tuple(depths),
        num_group_tokens=tuple(tokens),
        num_output_groups=tuple(outputs[: n - 1]),
        vision_mlp_ratio=_ratio(int(v.hidden_size), int(v.intermediate_size), "vision_config.intermediate_size"),
        assign_mlp_ratio=ratio,
        assign_eps=float(v.assign_eps),
        drop_path_rate=0.0,  # HF has no stochastic depth
        vision_act=_act(v.hidden_act, "vision_config.hidden_act"),
        vocab_size=int(t.vocab_size),
        context_length=int(t.max_position_embeddings),
        text_width=int(t.hidden_size),
        text_layers=int(t.num_hidden_layers),
        text_heads=int(t.num_attention_heads),
        text_mlp_ratio=_ratio(int(t.hidden_size), int(t.intermediate_size), "text_config.intermediate_size"),
        text_act=_act(t.hidden_act, "text_config.hidden_act"),
        proj_hidden=int(hf.projection_intermediate_dim),
        embed_dim=int(hf.projection_dim),
        logit_scale_init=float(hf.logit_scale_init_value),
        layer_norm_eps=float(v.layer_norm_eps),
    )
    extra = getattr(hf, _EXTRA_CONFIG, None)
    if isinstance(extra, dict):
        fields.update({k: extra[k] for k in _KEEP_FROM_EXTRA if k in extra})
    try:
        return GroupViTConfig(**fields)
    except ModelConfigError as exc:
        raise HFGroupViTError(f"HF config cannot build a GroupViT: {exc}") from None


def hf_config_dict(config: GroupViTConfig, multi_label_logit_scale: Optional[float] = None) -> dict[str, Any]:
    """Why: the config.json transformers' GroupViTModel.from_pretrained reads for a model of ours."""
    c = config
    for i in range(1, len(c.depths)):
        if c.num_group_tokens[i] > 0 and c.num_output_groups[i - 1] != c.num_group_tokens[i - 1]:
            raise HFGroupViTError(f"cannot export {c.name!r}: HF needs num_output_groups[{i - 1}] == "
                                  f"num_group_tokens[{i - 1}] where a group projector exists")
    if not c.qkv_bias:
        raise HFGroupViTError(f"cannot export {c.name!r}: HF GroupViT always has q/k/v biases (qkv_bias=False)")
    ensure_torchvision()
    from transformers import GroupViTConfig as HFConfig

    vision = dict(
        hidden_size=c.vision_width, intermediate_size=int(c.vision_width * c.vision_mlp_ratio), depths=list(c.depths),
        num_hidden_layers=sum(c.depths), num_group_tokens=list(c.num_group_tokens),
        num_output_groups=list(c.num_output_groups) + [c.num_output_groups[-1] if c.num_output_groups else 0],
        num_attention_heads=c.vision_heads, image_size=c.image_size, patch_size=c.patch_size,
        num_channels=c.in_chans, hidden_act=c.vision_act, layer_norm_eps=c.layer_norm_eps,
        assign_eps=c.assign_eps, assign_mlp_ratio=list(c.assign_mlp_ratio),
    )
    text = dict(
        vocab_size=c.vocab_size, hidden_size=c.text_width, intermediate_size=int(c.text_width * c.text_mlp_ratio),
        num_hidden_layers=c.text_layers, num_attention_heads=c.text_heads, max_position_embeddings=c.context_length,
        hidden_act=c.text_act, layer_norm_eps=c.layer_norm_eps, eos_token_id=c.vocab_size - 1,
        bos_token_id=c.vocab_size - 2,
    )
    hf = HFConfig(text_config=text, vision_config=vision, projection_dim=c.embed_dim,
                  projection_intermediate_dim=c.proj_hidden, logit_scale_init_value=c.logit_scale_init)
    hf.architectures = ["GroupViTModel"]
    setattr(hf, _EXTRA_CONFIG, c.to_dict())
    if multi_label_logit_scale is not None:
        setattr(hf, _EXTRA_ML_SCALE, float(multi_label_logit_scale))
    return hf.to_dict()


# --------------------------------------------------------------------------- folders

def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected a GroupViTModel.save_pretrained folder)")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a Hugging Face model folder has config.json and model.safetensors")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HFGroupViTError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict) or cfg.get("model_type") != "groupvit":
        got = cfg.get("model_type") if isinstance(cfg, dict) else type(cfg).__name__
        raise HFGroupViTError(f"{path}: model_type is {got!r}, expected 'groupvit' (a GroupViTModel folder)")
    return cfg


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated weight files
        raise HFGroupViTError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None


def read_hf_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Why: the tensors of a save_pretrained folder: single or sharded safetensors, else pytorch_model.bin."""
    folder = Path(folder)
    for single, index in ((SAFETENSORS_NAME, SAFETENSORS_INDEX), (TORCH_NAME, TORCH_INDEX)):
        if (folder / single).is_file():
            return _load_file(folder / single)
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                raise HFGroupViTError(f"{folder / index}: not a weight index ({exc})") from None
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (folder / shard).is_file():
                    raise FileNotFoundError(f"{folder / shard}: shard listed in {index} is missing")
                out.update(_load_file(folder / shard))
            return out
    raise FileNotFoundError(f"{folder}: no weights; expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX}, {TORCH_NAME} "
                            f"or {TORCH_INDEX}")


def load_hf_groupvit(folder: str | Path, **overrides: Any) -> GroupViT:
    """Why: a GroupViT of ours from a GroupViTModel.save_pretrained folder (eval mode, like from_pretrained)."""
    folder = Path(folder)
    raw = _read_config(folder)
    try:
        config = config_from_hf(raw)
    except HFGroupViTError as exc:
        raise HFGroupViTError(f"{folder / CONFIG_NAME}: {exc}") from None
    if overrides:
        config = config.replace(**overrides)
    model = GroupViT(config)
    sd = state_dict_from_hf(model, read_hf_weights(folder), source=str(folder))
    if _EXTRA_ML_SCALE in raw:
        sd["multi_label_logit_scale"] = torch.tensor(float(raw[_EXTRA_ML_SCALE]))
    model.load_state_dict(sd, strict=True)
    return model.eval()


def export_hf(model: GroupViT, folder: str | Path) -> Path:
    """Why: write config.json + model.safetensors that transformers.GroupViTModel.from_pretrained loads."""
    from safetensors.torch import save

    folder = Path(folder)
    cfg = hf_config_dict(model.config, float(model.multi_label_logit_scale.detach()))
    tensors = {k: v.cpu() for k, v in hf_state_dict(model).items()}
    write_bytes_atomic(folder / SAFETENSORS_NAME, save(tensors, metadata={"format": "pt"}))
    write_json_atomic(folder / CONFIG_NAME, cfg)
    return folder
