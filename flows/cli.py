"""The `cocu` console script: every `cocu_core` sub-command plus the ones that start Prefect flows.

Why here: `cocu_core` is a library without Prefect; commands that run flows or create deployments
live with the flows and are added to the same command registry (`cocu_core.cli.command`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from cocu_core import cli as core_cli
from cocu_core.cli import add_config_args, command, load_config_args
from cocu_core.layout import run_state_path

FORCE_AFTER_S = 60  # a flow that has not stopped this long after Ctrl-C is killed with its whole tree


def _setup_run(p: argparse.ArgumentParser) -> None:
    add_config_args(p, required=True)
    p.add_argument("--only", metavar="STAGE", default=None, help="run only this stage (its inputs must exist)")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", default=None,
                   help="run this stage and every later one")


def flow_command(args: argparse.Namespace) -> list[str]:
    """Why: the child command line that runs the flow (`python -m flows.run`) with this command's options."""
    cmd = [sys.executable, "-m", "flows.run", "--config", str(Path(args.config).resolve())]
    for item in args.set or []:
        cmd += ["--set", item]
    if args.only:
        cmd += ["--only", args.only]
    if args.from_stage:
        cmd += ["--from", args.from_stage]
    return cmd


def _stop(proc: subprocess.Popen, config: str, state_file: Path, interrupted_line=None) -> int:
    """Why: first Ctrl-C: ask the flow to stop (it records the interrupted stage and says so); a second
    Ctrl-C, or no exit within FORCE_AFTER_S, kills the flow's whole process tree."""
    import json

    from cocu_core.proc import kill_group

    if interrupted_line is None:
        from flows.run import interrupted_line
    try:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=FORCE_AFTER_S)
        return 130
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        kill_group(proc.pid)
        proc.wait()
    try:
        stage = json.loads(state_file.read_text()).get("stage")
    except (OSError, ValueError):
        stage = None
    print(interrupted_line(stage, config) + " (stopped by force)", file=sys.stderr, flush=True)
    return 130


def _raise_interrupt(signum: int, frame: object) -> None:
    """Why: `kill` (SIGTERM) of `cocu run` stops the flow the way Ctrl-C does."""
    raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace) -> int:
    """Run the `cocu_pipeline` Prefect flow for a config (cached stages are skipped; a rerun resumes)."""
    from cocu_core.stages import preflight, select_stages

    cfg = load_config_args(args)
    if "download" in select_stages(cfg, args.only, args.from_stage):  # mistakes: one line, before Prefect starts
        preflight(cfg)
    return run_flow_process(flow_command(args), args.config, run_state_path(cfg))


def run_flow_process(cmd: list[str], config: str, state_file: Path, interrupted_line=None) -> int:
    """Why: a flow runs in a child process of its own session, so one Ctrl-C stops it cleanly (see flows/run.py)."""
    from cocu_core.proc import tree_env

    root = str(Path(__file__).resolve().parent.parent)
    env = tree_env({"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    # Own session: the terminal's Ctrl-C reaches only this process, which forwards it (see flows/run.py);
    # the child and everything it starts die with this process if it is killed (PDEATHSIG, cocu_core/proc.py).
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        rc = proc.wait()
        return rc if rc >= 0 else 128 - rc  # killed by a signal: the shell's convention
    except KeyboardInterrupt:
        return _stop(proc, config, state_file, interrupted_line)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            from cocu_core.proc import kill_group

            kill_group(proc.pid)
            proc.wait()


command("run", _setup_run)(cmd_run)


def _setup_ablation(p: argparse.ArgumentParser) -> None:
    add_config_args(p, required=True)
    p.add_argument("--arms", default=None, metavar="A,B,...",
                   help="arms to compare (default: ablation.arms): baseline, v1, v2, v3, cocu, topk-release, oracle")
    p.add_argument("--seeds", default=None, metavar="0,1,...", help="training seeds (default: ablation.seeds)")
    p.epilog = ("Trains train.model (groupvit-toy) per arm and seed with the same budget (ablation.epochs), initialisation and data "
                "order, evaluates each on the toy world's val split and writes <workdir>/<ablation.out>/: table.md "
                "and table.json (mean and std over seeds of mIoU, stuff/thing mIoU, zero-shot top-1), "
                "loss_curves.png, maps/ (concepts missing from the captions, baseline beside CoCu) and report.md. "
                "Missing upstream stages (curation of every variant the arms read) run first; finished runs are "
                "reused, so a rerun resumes. Example: cocu ablation -c configs/toy.yaml --arms baseline,cocu "
                "--seeds 0,1 --set ablation.epochs=2")


def ablation_overrides(args: argparse.Namespace) -> list[str]:
    """Why: `--arms`/`--seeds` are shorthands for `--set ablation.arms=[...]`/`--set ablation.seeds=[...]`."""
    from cocu_core.cli import UserError

    out = list(args.set or [])
    if args.arms is not None:
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        if not arms:
            raise UserError("--arms needs at least one arm, e.g. --arms baseline,cocu")
        out.append("ablation.arms=[" + ",".join(arms) + "]")
    if args.seeds is not None:
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--seeds takes whole numbers separated by commas, got '{args.seeds}'") from None
        if not seeds:
            raise UserError("--seeds needs at least one seed, e.g. --seeds 0,1")
        out.append("ablation.seeds=[" + ",".join(map(str, seeds)) + "]")
    return out


def cmd_ablation(args: argparse.Namespace) -> int:
    """Run the paper's ablation (Table 3) in miniature: every arm x seed trained and evaluated, then the report."""
    from cocu_core.ablation import split_arms

    args.set = ablation_overrides(args)
    cfg = load_config_args(args)  # mistakes (bad arm, bad field): one line, before Prefect starts
    if cfg.data.source != "toyworld":
        from cocu_core.cli import UserError

        raise UserError(f"the ablation runs on the toy world; config '{cfg.name}' has data.source "
                        f"'{cfg.data.source}'")
    for arm, why in split_arms(cfg.ablation.arms)[1].items():
        print(f"note: arm '{arm}' will be reported as not available: {why}", file=sys.stderr)
    cmd = [sys.executable, "-m", "flows.ablation", "--config", str(Path(args.config).resolve())]
    for item in args.set:
        cmd += ["--set", item]
    return run_flow_process(cmd, args.config, run_state_path(cfg), _ablation_interrupted)


def _ablation_interrupted(stage: str | None, config: str) -> str:
    from flows.ablation import interrupted_line  # imports Prefect: only after an interrupt

    return interrupted_line(stage, config)


command("ablation", _setup_ablation)(cmd_ablation)


def _setup_deploy(p: argparse.ArgumentParser) -> None:
    add_config_args(p, required=True)
    p.add_argument("--pool", default=None, help="process work pool name (default: the one in deployments/prefect.yaml)")
    p.add_argument("--gpu", action="store_true", help="also deploy cocu-pipeline-gpu (its docker pool must exist)")
    p.add_argument("--gpu-config", default=None, help="config for the GPU deployment (default: the one in the file)")
    p.add_argument("--no-schedule", action="store_true",
                   help="deploy cocu-recurate without a schedule (default: runtime.recurate_cron, daily at 03:00)")


def cmd_deploy(args: argparse.Namespace) -> int:
    """Create the Prefect deployments cocu-pipeline and cocu-recurate (schedule from runtime.recurate_cron)."""
    from flows.deploy import deploy

    cfg = load_config_args(args)
    if args.no_schedule:
        cfg.runtime.recurate_cron = None
    names = deploy(cfg, args.config, args.pool, args.gpu, args.gpu_config, list(args.set or []))
    sched = (f"cron '{cfg.runtime.recurate_cron}' ({cfg.runtime.recurate_timezone})" if cfg.runtime.recurate_cron
             else "no schedule (--no-schedule, or runtime.recurate_cron is null)")
    print(f"deployed {', '.join(names)}; cocu-recurate: {sched}")
    print("start a worker from this clone: prefect worker start --pool "
          f"{args.pool or 'cocu-process'}; trigger: prefect deployment run cocu_pipeline/cocu-pipeline")
    return 0


command("deploy", _setup_deploy)(cmd_deploy)


def main(argv: list[str] | None = None) -> int:
    """Why: the console-script entry (`cocu`), over the shared registry."""
    return core_cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
