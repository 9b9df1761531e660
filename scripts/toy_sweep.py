"""Toy training-recipe sweep: configs x arms x seeds, each a real train_stage + evaluate_stage on one work folder.

Used to look for the toy grouping collapse (issue 9). Example (CPU, two runs side by side):
    SWEEP_WORK=runs/toy OUT=/tmp/sweep SWEEP_DEVICE=cpu SWEEP_CONFIGS=default,gumbel SWEEP_ARMS=cocu \
      SWEEP_SEEDS=0 SWEEP_PROCS=2 SWEEP_WORKERS=0 SWEEP_THREADS=1 .venv/bin/python scripts/toy_sweep.py
The work folder needs the toy world, the download and the archives of the arms (`cocu run`, `cocu ablation`).
"""
import json, multiprocessing as mp, os, sys, time
from pathlib import Path

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))
from cocu_core.compat import ensure_torchvision  # noqa: E402

ensure_torchvision()
WORK = os.environ.get("SWEEP_WORK", str(ROOT / "runs" / "toy"))
OUT = Path(os.environ.get("OUT", "/tmp/sweep_out"))
DEVICE = os.environ.get("SWEEP_DEVICE", "cuda")
MAX_STEPS = int(os.environ.get("SWEEP_MAX_STEPS", "0")) or None

CONFIGS = {
    "default": {},  # groupvit-toy as registered (Gumbel noise off since the collapse was found)
    "gumbel": {"model_overrides": {"gumbel": True}},  # GV's Gumbel-softmax assignment, the toy default before
    "wide_proj": {"model_overrides": {"proj_hidden": 2048, "embed_dim": 256}},
    "tmpl_simple": {"templates": "simple"},
    "lr16e4": {"lr": 1.6e-3},
    "ep20": {"epochs": 20},
}
ARMS = os.environ.get("SWEEP_ARMS", "baseline,cocu").split(",")
SEEDS = [int(s) for s in os.environ.get("SWEEP_SEEDS", "0,1").split(",")]
ONLY = [c for c in os.environ.get("SWEEP_CONFIGS", "").split(",") if c]


def job(args):
    name, arm, seed = args
    import torch
    torch.set_num_threads(2)
    from cocu_core.config import load_config
    from cocu_core.stages.evaluate import evaluate_stage
    from cocu_core.ablation import run_metrics
    from cocu_core.stages.train import train_stage

    over = dict(CONFIGS[name])
    train = {**over, "variant": arm, "seed": seed, "device": DEVICE, "num_workers": int(os.environ.get("SWEEP_WORKERS", "3")), "threads": int(os.environ.get("SWEEP_THREADS", "2")),
             "checkpoint_every": 100000}
    if MAX_STEPS:
        train["max_steps"] = MAX_STEPS
    cfg = load_config(ROOT / "configs" / "toy.yaml", {"workdir": WORK, "train": train,
                                                      "eval": {"device": DEVICE, "panels": 0}})
    out = OUT / "runs" / f"{name}_{arm}_s{seed}"
    t0 = time.time()
    tr = train_stage(cfg, arm, out_dir=out / "train", log=lambda m: None, progress=False)
    t1 = time.time()
    ev = evaluate_stage(cfg, checkpoint=out / "train" / "final.pt", out_dir=out / "eval", log=lambda m: None,
                        progress=False, label=f"{name}/{arm}/{seed}")
    m = run_metrics(ev)  # the ablation table's cells (stuff/thing means skip classes with no IoU, as mmseg does)
    r = dict(config=name, arm=arm, seed=seed, miou=round(m["mIoU"], 2), stuff=round(m["stuff_mIoU"], 2),
             thing=round(m["thing_mIoU"], 2), top1=round(m["top1"], 2),
             first_loss=tr.get("first_loss"), last_loss=tr.get("last_loss"), train_s=round(t1 - t0, 1),
             eval_s=round(time.time() - t1, 1))
    print(json.dumps(r), flush=True)
    return r


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    names = ONLY or list(CONFIGS)
    first = [(names[0], a, s) for s in SEEDS for a in ARMS]  # the default config, every seed, first
    jobs = first + [(n, a, s) for s in SEEDS for n in names[1:] for a in ARMS]
    res = []
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(int(os.environ.get("SWEEP_PROCS", "4")), mp_context=mp.get_context("spawn")) as ex:
        futs = [ex.submit(job, j) for j in jobs]
        for f in as_completed(futs):
            try:
                res.append(f.result())
            except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
                print("FAILED", repr(e)[:2000], flush=True)
            (OUT / "sweep.json").write_text(json.dumps(res, indent=1))
    import statistics as st
    print("\n| config | arm | mIoU mean (seeds) | stuff | thing | top-1 |\n|---|---|---|---|---|---|")
    for n in names:
        for a in ARMS:
            rs = [r for r in res if r["config"] == n and r["arm"] == a]
            if rs:
                f = lambda k: f"{st.mean(r[k] for r in rs):.1f}" + (f" ± {st.stdev(r[k] for r in rs):.1f}" if len(rs) > 1 else "")
                print(f"| {n} | {a} | {f('miou')} ({', '.join(str(r['miou']) for r in rs)}) | {f('stuff')} | {f('thing')} | {f('top1')} |")
