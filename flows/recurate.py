"""The `cocu_recurate` flow (deployment `cocu-recurate`, on the config's `runtime.recurate_cron`).

When the pair list grows (rows appended to `data.url_list`, or new list files in a `data.url_list`
folder), only the new pairs are downloaded and embedded (new shards after the finished ones); the
new vectors are added to the image and caption indexes (their coarse quantisers kept; rebuilt past
`index.retrain_growth` or below the recall target); only the archive rows that can change are
re-curated (new images, earlier images a new image joins the N nearest of, changed concepts), the
others carried over (`curation.incremental`); the archives become a new numbered version (older ones
stay readable until `runtime.keep_versions`); a summary artifact counts the new pairs, the rows
recomputed and why, and the old archives that changed. `train=True` then trains on the new version.
"""

from __future__ import annotations

import time
from typing import Optional

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from cocu_core.stages import applicable_stages, preflight
from flows import publish
from flows.pipeline import RUN_STATE, StageRun, execute, finish, resolve_config

RECURATE_STAGES = ("toyworld", "download", "encoder", "embed", "index", "vocabulary", "concepts", "curate")


def recurate_summary(run: StageRun) -> tuple[list[dict], str]:
    """Why: the numbers a scheduled re-curation is judged by, as a table and a markdown report."""
    dl, emb, arch, cur = (run.results.get(k) or {} for k in ("download", "embed", "archives", "curate"))
    new_pairs = 0 if dl.get("cached") else int(dl.get("new_pairs", 0))
    ch = arch.get("changes") or {}
    rows = [
        {"item": "new pairs in the list", "value": new_pairs},
        {"item": "new pairs downloaded", "value": 0 if dl.get("cached") else dl.get("new_success", 0)},
        {"item": "pairs in all", "value": dl.get("success")},
        {"item": "shards embedded / reused", "value": f"0 / {emb.get('shards', 0)}" if emb.get("cached") else
         f"{emb.get('shards_embedded', 0)} / {emb.get('shards_reused', 0)}"},
        {"item": "archive version", "value": arch.get("version")},
        {"item": "new version", "value": bool(arch.get("new_version"))},
        {"item": "previous version", "value": arch.get("previous")},
        {"item": "archive rows recomputed / carried over", "value": f"{cur.get('recomputed', 0)} / {cur.get('carried', 0)}"},
        {"item": "earlier rows recomputed: a new image among their neighbours", "value": cur.get("new_neighbour", 0)},
        {"item": "earlier rows recomputed: a member's caption concepts or an archive concept changed",
         "value": cur.get("concepts_changed", 0)},
        {"item": "old image archives changed", "value": f"{ch.get('old_images_changed', 0)} of {ch.get('old_images', 0)}"},
        {"item": "archive files changed / new", "value": f"{ch.get('files_changed', 0)} / {ch.get('files_new', 0)}"},
        {"item": "versions pruned", "value": ", ".join(map(str, arch.get("pruned") or [])) or "none"},
    ]
    md = [f"# Re-curation of '{run.cfg.name}'", "",
          f"**{new_pairs} new pairs** in the list" + ("" if new_pairs else " (nothing to do; archives unchanged)") + ".",
          "", "| | |", "|---|---|"] + [f"| {r['item']} | {r['value']} |" for r in rows]
    if arch.get("dir"):
        md += ["", f"Archives version {arch.get('version')}: `{arch['dir']}`"]
    return rows, "\n".join(md) + "\n"


@flow(name="cocu_recurate", log_prints=True, task_runner=ThreadPoolTaskRunner())
def cocu_recurate(config_path: str = "configs/toy.yaml", overrides: Optional[list[str]] = None,
                  train: bool = False) -> dict:
    """Re-curate after the pair list grew: new pairs only are downloaded and embedded and added to the indexes,
    the archive rows that can change re-curated, archives published as a new version; `train` then trains and
    evaluates on it."""
    t_start = time.time()
    RUN_STATE.update(stage=None, config=config_path)
    cfg = resolve_config(config_path, overrides)
    preflight(cfg)
    wanted = set(RECURATE_STAGES) | ({"train", "evaluate"} if train else set())
    cfg.workpath.mkdir(parents=True, exist_ok=True)
    run = StageRun(cfg, [s for s in applicable_stages(cfg) if s in wanted])
    execute(run, "cocu_recurate")
    rows, md = recurate_summary(run)
    publish.publish_table(cfg, "recurate", rows, "re-curation: new pairs and what changed")
    publish.publish_markdown(cfg, "recurate-summary", md, "re-curation summary")
    result = finish(run, "cocu_recurate", t_start)
    print(md)
    return {**result, "recurate": {r["item"]: r["value"] for r in rows}}
