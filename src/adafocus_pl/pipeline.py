"""The whole AdaFocus chain for one experiment: ``python -m adafocus_pl.pipeline [hydra overrides...]``.

1. data: generate the synthetic benchmark when it is missing (``VideoDataModule.prepare_data``);
2. Stage I -> II -> III, each a ``python -m adafocus_pl.train`` run in its own deterministic directory;
3. the baselines of the paper's Table 5 and a glance-only model, each given the same Stage III budget from the
   Stage I weights (a fair comparison, see README);
4. AdaFocus+ (Sec. 3.3): Stage II and III again with ``plus=on``, from the same Stage I;
5. ``adafocus_pl.eval`` on the AdaFocus and AdaFocus+ Stage III checkpoints (online curves, rho per eta, figures);
6. a results table on the test split (top-1, mAP, GFLOPs per video, share of frames through f_L, patch hit rate and
   coverage) with an accuracy-vs-GFLOPs plot, written as ``results.json`` / ``results.md`` /
   ``accuracy_vs_gflops.png`` / ``online.png`` in the pipeline's run directory.

Each stage is skipped when finished with the same config, resumed when interrupted (``adafocus_pl.chain``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra.utils import instantiate

from adafocus_pl.chain import Step, run_dir, run_step
from adafocus_pl.utils.config import compose


@dataclass
class Run:
    method: str                 # the row name in the results table
    stage: str                  # the stage config
    overrides: list[str] = field(default_factory=list)
    patch_policy: str | None = None  # for FLOPs: None = no results row
    evaluate: bool = False           # rows from adafocus_pl.eval (online curve, AdaFocus+ rows per eta)


def chain(stage1_ckpt: str, plus: bool = True) -> list[Run]:
    """Stage I, II, III and the baselines that share Stage III's budget; then AdaFocus+ unless ``plus=False``
    (AdaFocus-TSM has no frame skipping)."""
    def baseline(name: str, policy: str) -> Run:
        return Run(name, "stage3", [f"stage.name=stage3_{policy}", f"stage.module.patch_policy={policy}",
                                    f"init_from={stage1_ckpt}"], patch_policy=policy)
    runs = [
        Run("stage I (warm-up)", "stage1"),
        Run("stage II (policy)", "stage2"),
        Run("AdaFocus (learned policy)", "stage3", patch_policy="learned", evaluate=True),
        baseline("glance only", "none"),
        baseline("random patches", "random"),
        baseline("centre patches", "centre"),
        baseline("Gaussian patches", "gaussian"),
        Run("stage II+ (policies pi, pi')", "stage2", ["plus=on"]),
        Run("AdaFocus+", "stage3", ["plus=on"], patch_policy="learned", evaluate=True),
    ]
    return runs if plus else runs[:-2]


def evaluate_run(overrides: list[str], ckpt: Path) -> dict:
    """``adafocus_pl.eval`` on a Stage III checkpoint, in this process (fine-tuned baselines are separate rows)."""
    from adafocus_pl.eval import run as run_eval

    return run_eval(compose("eval", overrides + [f"ckpt_path={ckpt}", "eval.fixed_policies=[]"]))


def main(argv: list[str] | None = None) -> Path:
    user = list(sys.argv[1:] if argv is None else argv)
    cfg = compose("train", user)
    from adafocus_pl.evaluation.evaluate import plot_rows, results_markdown
    from adafocus_pl.evaluation.flops import gflops_per_video, model_component_gflops

    started = time.perf_counter()
    print(f"[pipeline] data: {cfg.data.root}", flush=True)
    instantiate(cfg.data, _recursive_=False).prepare_data()
    timings = {"data": time.perf_counter() - started}

    parts = model_component_gflops(cfg.model, (cfg.data.eval_crop, cfg.data.eval_crop))  # counted once, per frame
    stage1_dir = run_dir(user + ["stage=stage1"])
    rows, eval_dirs = [], []
    plus = cfg.model.get("architecture", "adafocus") != "adafocus_tsm"
    for run in chain(str(stage1_dir / "checkpoints" / "last.ckpt"), plus=plus):
        overrides = user + [f"stage={run.stage}"] + run.overrides
        t0 = time.perf_counter()
        directory, _ = run_step(Step(run.method, overrides))
        timings[run.method] = time.perf_counter() - t0
        if run.patch_policy is None:
            continue
        if run.evaluate:
            t0 = time.perf_counter()
            result = evaluate_run(overrides, directory / "checkpoints" / "last.ckpt")
            timings[f"eval {run.method}"] = time.perf_counter() - t0
            for row in result["rows"]:
                if "plus=on" in run.overrides and "keep_ratio" not in row:  # the eta = 1 end of the AdaFocus+ curve
                    row.update(method="AdaFocus+ network, f_L on every frame", family="AdaFocus+", keep_ratio=1.0)
                rows.append({**row, "run_dir": str(directory)})
            eval_dirs.append(result["paths"]["md"])
            continue
        metrics = json.loads((directory / "metrics.json").read_text())
        rows.append({
            "method": run.method, "family": run.method, "patch_policy": run.patch_policy, "run_dir": str(directory),
            "top1": metrics.get("test/top1"), "mAP": metrics.get("test/mAP"),
            "hit_rate": metrics.get("test/hit_rate"), "coverage": metrics.get("test/coverage"),
            "gflops_per_video": gflops_per_video(parts, cfg.data.num_segments, use_local=run.patch_policy != "none"),
            "keep_fraction": 0.0 if run.patch_policy == "none" else 1.0,
        })

    out_dir = stage1_dir.parents[2] / "pipeline" / stage1_dir.parent.name / stage1_dir.name
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"experiment": cfg.experiment_name, "patch_size": cfg.model.patch_size, "seed": cfg.seed,
               "split": "test", "frames_per_video": cfg.data.num_segments, "rows": rows,
               "seconds": {k: round(v, 1) for k, v in timings.items()}}
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    title = f"{cfg.experiment_name}: P={cfg.model.patch_size}, seed {cfg.seed}, test split"
    figures = plot_rows(rows, out_dir, title, metric="mAP" if str(cfg.monitor).endswith("mAP") else "top1")
    links = "\n".join(f"- {name}: `{path}`" for name, path in
                      [*figures.items(), *(("evaluation", p) for p in eval_dirs)])
    table = results_markdown(rows, title)
    (out_dir / "results.md").write_text(f"{table}\n{links}\n")
    print("\n" + table)
    print("[pipeline] wall time per step (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"[pipeline] results: {out_dir / 'results.md'} and results.json")
    return out_dir


if __name__ == "__main__":
    main()
