"""The torchvision workaround makes open_clip/timm/transforms import, and is inert where not needed."""

import subprocess
import sys


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_open_clip_timm_transforms_import_after_compat():
    code = (
        "from cocu_core.compat import ensure_torchvision; ensure_torchvision()\n"
        "import open_clip, timm, torchvision.transforms as T, torch\n"
        "m = timm.create_model('resnet18', pretrained=False, num_classes=3).eval()\n"
        "x = T.Compose([T.Resize(32), T.CenterCrop(32)])(torch.zeros(3, 40, 40))\n"
        "print(tuple(x.shape), m(torch.zeros(1, 3, 32, 32)).shape[-1])\n"
    )
    assert _run(code) == "(3, 32, 32) 3"


def test_compat_does_nothing_when_plain_import_works(tmp_path):
    # A torchvision that imports cleanly (as on a CUDA machine): a real package first on sys.path.
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("NATIVE = True\n")
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from cocu_core import compat\n"
        "import torch\n"
        "patched = compat.ensure_torchvision()\n"
        "import torchvision\n"
        "print(patched, compat.is_patched(), compat._library is None, torchvision.NATIVE)\n"
    )
    assert _run(code) == "False False True True"


def test_compat_is_idempotent():
    # whether this machine needs the patch, learnt without the module under test: does a plain import fail?
    probe = subprocess.run([sys.executable, "-c", "import torch, torchvision"], capture_output=True, text=True,
                           timeout=300)
    needs = probe.returncode != 0
    assert not needs or "torchvision::nms" in probe.stderr or "does not exist" in probe.stderr, probe.stderr[-2000:]
    code = (
        "from cocu_core import compat\n"
        "a = compat.ensure_torchvision(); lib = compat._library; b = compat.ensure_torchvision()\n"
        "import torchvision\n"
        "print(a, b, compat.is_patched(), compat._library is lib)\n"
    )
    assert _run(code) == f"{needs} {needs} {needs} True"  # the second call defines nothing again
