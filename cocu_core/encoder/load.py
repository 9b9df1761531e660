"""Load the curation CLIP (any open_clip model, or our trained `cocu-tiny`) and say where its weights are.

``load_encoder`` returns the model plus the ``clip_model`` string clip-retrieval needs
(``open_clip:<arch>/<absolute checkpoint path>``), so inference never touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from cocu_core.compat import ensure_torchvision
from cocu_core.config import ConfigError, PipelineConfig, fingerprint
from cocu_core.encoder.toy_model import TOY_MODEL, register_toy_model
from cocu_core.io import read_manifest
from cocu_core.layout import stage_dir

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def encoder_dir(cfg: PipelineConfig) -> Path:
    """Why: the encoder stage and its readers agree on one folder under the workdir."""
    return stage_dir(cfg, "encoder")


def _open_clip():
    ensure_torchvision()
    import open_clip

    return open_clip


def resolve_weights(cfg: PipelineConfig, enc_dir: Optional[str | Path] = None) -> tuple[str, Path]:
    """Why: turn (encoder.model, encoder.pretrained) into an architecture and a local file, or a clear error."""
    open_clip = _open_clip()
    enc = cfg.encoder
    arch = enc.model
    folder = Path(enc_dir) if enc_dir is not None else encoder_dir(cfg)
    if arch == TOY_MODEL:
        register_toy_model(enc, cfg.data.image_size, folder)
        if enc.pretrained:
            p = Path(enc.pretrained).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"encoder.pretrained checkpoint not found: {p}")
            return arch, p.resolve()
        ckpt = folder / f"{TOY_MODEL}.pt"
        if not ckpt.is_file():
            hint = "run `cocu encoder-report` or `cocu run` to train it" if enc.train_toy else "set encoder.train_toy: true"
            raise FileNotFoundError(f"no trained {TOY_MODEL} checkpoint at {ckpt}; {hint}")
        return arch, ckpt.resolve()
    if arch not in open_clip.list_models():
        raise ConfigError(f"encoder.model '{arch}' is not an open_clip architecture (see open_clip.list_models())")
    if not enc.pretrained:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ConfigError(f"encoder.pretrained must name weights for {arch}: a tag ({', '.join(tags) or 'none known'}) or a file path")
    given = Path(enc.pretrained).expanduser()
    if given.is_file():
        return arch, given.resolve()
    if enc.pretrained.endswith(_WEIGHT_SUFFIXES) or "/" in enc.pretrained:
        raise FileNotFoundError(f"encoder.pretrained weights file not found: {given}")
    pcfg = open_clip.get_pretrained_cfg(arch, enc.pretrained)
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ConfigError(f"encoder.pretrained '{enc.pretrained}' is not a known tag for {arch}; known: {', '.join(tags)}")
    where = pcfg.get("hf_hub") or pcfg.get("url") or "?"
    try:
        from open_clip.pretrained import download_pretrained

        path = download_pretrained(pcfg, cache_dir=enc.cache_dir)
    except Exception as exc:  # offline hub/url failures come in many types; all mean "not available locally"
        path = ""
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    else:
        reason = "download returned no file"
    if not path or not Path(path).is_file():
        if pcfg.get("hf_hub"):
            repo, fname = os.path.split(pcfg["hf_hub"])
            how = f"`huggingface-cli download {repo} {fname or 'open_clip_pytorch_model.bin'}`"
        else:
            how = f"from {where}"
        raise FileNotFoundError(
            f"pretrained weights {arch}/{enc.pretrained} are not available locally ({reason}). Provide them: "
            f"download them on a connected machine ({how}), then set `encoder.pretrained: /path/to/weights{_suffix(where)}` "
            f"or point `encoder.cache_dir` at the Hugging Face cache holding them (we run with HF_HUB_OFFLINE=1)."
        )
    return arch, Path(path).resolve()


def _suffix(where: str) -> str:
    for s in _WEIGHT_SUFFIXES:
        if where.endswith(s):
            return s
    return ".bin"


def load_open_clip_checkpoint(arch: str, checkpoint: str | Path, device: str = "cpu"):
    """Why: one loader for any open_clip architecture + local file -> (model in eval mode, preprocess, tokenizer)."""
    open_clip = _open_clip()
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(checkpoint), device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(arch)


def encode_text(model: Any, tokenizer: Callable, texts: Sequence[str], batch_size: int = 512) -> np.ndarray:
    """Why: text embeddings for concepts and captions: float32, L2-normalised rows, in input order."""
    import torch

    if len(texts) == 0:
        return np.zeros((0, _embed_dim(model)), dtype=np.float32)
    device = next(model.parameters()).device
    outs = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            tok = tokenizer(list(texts[i:i + batch_size])).to(device)
            outs.append(torch.nn.functional.normalize(model.encode_text(tok).float(), dim=-1).cpu().numpy())
    return np.concatenate(outs).astype(np.float32)


def encode_images(model: Any, preprocess: Callable, images: Sequence[Any], batch_size: int = 256) -> np.ndarray:
    """Why: image embeddings (PIL images in, float32 L2-normalised rows out) through open_clip's preprocess."""
    import torch

    if len(images) == 0:
        return np.zeros((0, _embed_dim(model)), dtype=np.float32)
    device = next(model.parameters()).device
    outs = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.stack([preprocess(im.convert("RGB")) for im in images[i:i + batch_size]]).to(device)
            outs.append(torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1).cpu().numpy())
    return np.concatenate(outs).astype(np.float32)


def _embed_dim(model: Any) -> int:
    return int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None else 0


def make_text_encoder(model: Any, tokenizer: Callable) -> Callable[[list[str]], np.ndarray]:
    """Why: curation takes a plain `texts -> embeddings` function, not a model."""
    return lambda texts: encode_text(model, tokenizer, texts)


class LoadedEncoder(NamedTuple):
    """(model, preprocess, tokenizer, clip_model) plus helpers; unpacks as a 4-tuple."""

    model: Any
    preprocess: Callable
    tokenizer: Callable
    clip_model: str

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Why: the curation core's `encode_text_fn`: float32, L2-normalised."""
        return encode_text(self.model, self.tokenizer, texts)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Why: embed PIL images exactly as clip-retrieval does (same preprocess)."""
        return encode_images(self.model, self.preprocess, images)


def clip_model_string(arch: str, checkpoint: str | Path) -> str:
    """Why: clip-retrieval's spelling for a local open_clip model."""
    return f"open_clip:{arch}/{Path(checkpoint).resolve()}"


def load_encoder(cfg: PipelineConfig, workdir: Optional[str | Path] = None, device: str = "cpu") -> LoadedEncoder:
    """Why: every consumer (embed stage, curation, reports) loads the same weights the same way.

    `workdir` is the encoder folder (default `<cfg.workdir>/encoder`). Raises FileNotFoundError naming
    the missing file and how to provide it; ConfigError for an unknown architecture or tag.
    """
    arch, ckpt = resolve_weights(cfg, workdir)
    model, preprocess, tokenizer = load_open_clip_checkpoint(arch, ckpt, device)
    return LoadedEncoder(model, preprocess, tokenizer, clip_model_string(arch, ckpt))


def encoder_fingerprint(cfg: PipelineConfig, workdir: Optional[str | Path] = None) -> str:
    """Why: downstream caches key on the weights: our training manifest's key, else file identity (path, size, mtime)."""
    arch, ckpt = resolve_weights(cfg, workdir)
    m = read_manifest(ckpt.parent)
    if m and m.get("stage") == "encoder" and Path(m.get("checkpoint", "")) == ckpt:
        return m["cache_key"]
    st = ckpt.stat()
    return fingerprint({"arch": arch, "path": str(ckpt), "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def model_config_paths(cfg: PipelineConfig, workdir: Optional[str | Path] = None) -> list[Path]:
    """Why: processes that load the encoder by name (clip-retrieval) must register our architecture first."""
    if cfg.encoder.model != TOY_MODEL:
        return []
    folder = Path(workdir) if workdir is not None else encoder_dir(cfg)
    return [register_toy_model(cfg.encoder, cfg.data.image_size, folder).resolve()]
