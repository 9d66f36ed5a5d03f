"""The experiment plan, declared once: the runs that make up one sweep point and where each run lives.

:data:`PLAN` lists every step of one (experiment, patch size, seed): the training stages of AdaFocus and of
AdaFocus+ (paper Secs. 3.2-3.3), the fixed-policy and glance-only baselines of Table 5 and the evaluations of the
two final models. ``make train`` (:mod:`adafocus_pl.pipeline`) runs all of it, each sweep point
(:mod:`adafocus_pl.sweep`) runs the training steps of its variant (:func:`adafocus_pl.chain.stage_chain`), and the
report (:mod:`adafocus_pl.evaluation.report`) names final models by the same labels (:func:`families`).

:func:`run_directory` is the one place that says where a run lives; the configs reach it through the resolvers
registered by :func:`register_resolvers` (``${adafocus.run_dir:STAGE}``, ``${adafocus.point_dir:}``), which
importing :mod:`adafocus_pl.utils.config` registers. Of the project it imports only the patch-policy registry,
whose baselines it runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

from omegaconf import OmegaConf

from adafocus_pl.models.patch_policies import baseline_policies

# the two variants of a sweep point, as conf/plus/*.yaml tag them (plus.tag)
ADAFOCUS, ADAFOCUS_PLUS = "adafocus", "adafocus_plus"
SHARED = "shared"  # a step both variants run, with plus=off, so that they find the same run
TRAIN, EVAL = "train", "eval"
# the folders of one sweep point that are not stages: make train's results table and a sweep job's Hydra files
PIPELINE, SWEEP = "pipeline", "sweep"
# a hyper-parameter search's trials keep their own runs of the stages they change (adafocus_pl.search):
# <log_dir>/<experiment>/trials/<trial key>/<stage>/p<P>/seed<s>
TRIALS = "trials"
SEARCH_TAG = "hparams_search"  # the W&B tag of every trial's own runs

# Table 5's fixed policies and the glance-only model (the patch-policy registry's baselines), each given Stage
# III's budget from the Stage I weights: (results label, stage.module.patch_policy)
BASELINES = tuple((spec.label, spec.name) for spec in baseline_policies())


@dataclass(frozen=True)
class PlanStep:
    name: str               # the step's key; also the stage.name of a stage's run (a baseline's is
    #                         <stage>_<patch_policy>, e.g. stage3_random)
    stage: str              # its conf/stage option (an evaluation: the stage of the run it evaluates)
    label: str              # as printed; the results row of a final model has this name
    variant: str = SHARED   # SHARED | ADAFOCUS | ADAFOCUS_PLUS
    after: str = ""         # the step whose checkpoint it starts from (or, for an evaluation, that it evaluates)
    kind: str = TRAIN       # TRAIN | EVAL
    patch_policy: str | None = None   # a baseline: Stage III with this fixed policy, from the `after` step's weights
    family: str | None = None         # a final model: its family in the results tables
    optional: str | None = None       # "stage0": only when the schedule runs Stage 0; "baselines": only when asked
    per_patch_size: bool = True       # False: one run serves every patch size (no p<P> level in its directory)


# In the order ``make train`` prefers among steps that are ready: the longest chains first, so that the baselines
# fill the gaps. Each variant's chain, read in this order, runs every step after the one it starts from.
PLAN: tuple[PlanStep, ...] = (
    # the release's Stage 0 (f_G and f_L on whole frames, conf/stage/stage0.yaml): it never cuts a patch
    PlanStep("stage0", "stage0", "stage 0 (backbones on whole frames)", optional="stage0", per_patch_size=False),
    PlanStep("stage1", "stage1", "stage I (warm-up)", after="stage0"),                               # Eq. 5
    PlanStep("stage2", "stage2", "stage II (policy)", ADAFOCUS, after="stage1"),                     # Eqs. 6-7
    PlanStep("stage2_plus", "stage2", "stage II+ (policies pi, pi')", ADAFOCUS_PLUS, after="stage1"),  # Eq. 10
    PlanStep("stage3", "stage3", "stage III (fine-tuning)", ADAFOCUS, after="stage2", family="AdaFocus"),
    PlanStep("stage3_plus", "stage3", "stage III+ (fine-tuning)", ADAFOCUS_PLUS, after="stage2_plus",
             family="AdaFocus+"),
    PlanStep("eval", "stage3", "evaluation of AdaFocus", ADAFOCUS, after="stage3", kind=EVAL),
    PlanStep("eval_plus", "stage3", "evaluation of AdaFocus+", ADAFOCUS_PLUS, after="stage3_plus", kind=EVAL),
    *(PlanStep(f"baseline_{policy}", "stage3", label, ADAFOCUS, after="stage1", patch_policy=policy, family=label,
               optional="baselines") for label, policy in BASELINES),
)


def select(variants: tuple[str, ...], stage0: bool = False, baselines: bool = False,
           evaluations: bool = False) -> list[PlanStep]:
    """The steps of :data:`PLAN` that run for ``variants`` (shared steps once), in the plan's order; a step whose
    ``after`` is not among them (Stage I without Stage 0) starts from nothing."""
    wanted = {"stage0": stage0, "baselines": baselines}
    chosen = [step for step in PLAN if (step.variant == SHARED or step.variant in variants)
              and (step.optional is None or wanted[step.optional]) and (evaluations or step.kind == TRAIN)]
    names = {step.name for step in chosen}
    return [step if not step.after or step.after in names else replace(step, after="")
            for step in chosen]


def final_model(variant: str) -> str:
    """The step whose run is the final model of ``variant``'s chain (the one its evaluation evaluates)."""
    return next(step.after for step in PLAN if step.kind == EVAL and step.variant == variant)


def families() -> dict[tuple[str, bool], str]:
    """(Stage III patch policy, AdaFocus+) -> the family of a final model, from the plan's labels."""
    return {(step.patch_policy or "learned", step.variant == ADAFOCUS_PLUS): step.family
            for step in PLAN if step.family}


# the role of a run (conf/stage/*.yaml: stage.role), in its W&B tags and job type and in the report
METHOD, BASELINE = "method", "baseline"


def run_role(patch_policy: str) -> str:
    """``baseline`` for a Stage III run with a Table 5 baseline's patch policy (a fixed policy or glance-only),
    ``method`` for AdaFocus's own (learned) policy."""
    return BASELINE if patch_policy in {name for _, name in BASELINES} else METHOD


def job_type(stage_id: int, role: str) -> str:
    """A run's W&B job type: ``stage<id>`` for the method's stages, ``baseline`` for every baseline, so that a
    job-type filter never mixes a baseline with AdaFocus's Stage III."""
    return BASELINE if role == BASELINE else f"stage{stage_id}"


# ------------------------------------------------------------------------------------------------ the run layout
def point_dir(patch_size: Any, seed: Any) -> str:
    """A sweep point's part of a run directory: ``p<P>/seed<s>``, or ``seed<s>`` for a run that every patch size
    shares (``patch_size`` None). Wildcards give glob patterns (``point_dir("*", "*")``)."""
    return ("" if patch_size is None else f"p{patch_size}/") + f"seed{seed}"


def run_directory(log_dir: Any, experiment_name: str, stage: str, patch_size: Any, seed: Any,
                  trial: str | None = None) -> str:
    """The run directory of one stage of one sweep point: a pure function of its identity (no timestamps), so a
    re-run of the same command finds its own checkpoints, every DDP rank resolves the same directory, and the next
    stage finds this one. ``patch_size`` None: a run every patch size shares. ``trial``: the key of a
    hyper-parameter search's trial (:func:`trial_key`) that changes this stage; its run lives under
    ``<experiment>/trials/<key>/`` so that trials never share or replace each other's runs."""
    experiment = f"{log_dir}/{experiment_name}" + (f"/{TRIALS}/{trial}" if trial else "")
    return f"{experiment}/{stage}/{point_dir(patch_size, seed)}"


def trial_key(params: dict[str, Any]) -> str:
    """The folder of a search trial with these parameter values (``{"schedule.stage2.optimizer.lr": 3e-4, ...}``):
    a pure function of them, so a re-run of the same values finds its runs. Readable (each key's last part and the
    value to 3 digits) and exact (a hash of the values themselves): two trials whose values round alike differ."""
    items = sorted((str(name), value) for name, value in params.items())
    readable = "_".join(f"{name.split('.')[-1]}{_short(value)}" for name, value in items)
    digest = hashlib.sha1(json.dumps(items, default=str).encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


def _short(value: Any) -> str:
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return "".join(c if c.isalnum() or c in ".-+" else "-" for c in text)


def shared_by_patch_sizes(stage: str) -> bool:
    """Whether one run of ``stage`` serves every patch size (its directory has no ``p<P>`` level)."""
    return any(step.name == stage and not step.per_patch_size for step in PLAN)


def trial_of(cfg: Any, stage: str) -> str | None:
    """The search trial whose own run of ``stage`` this config is about (``trial.key`` when ``stage`` is among
    ``trial.stages``; the search sets both, :mod:`adafocus_pl.search`), else None."""
    trial = OmegaConf.select(cfg, "trial", default=None)
    if not trial or not trial.get("key") or stage not in (trial.get("stages") or []):
        return None
    return str(trial.key)


def run_dir_of(cfg: Any, stage: str) -> str:
    """:func:`run_directory` of ``stage`` for the experiment, patch size, seed (and search trial) of a composed
    config."""
    patch_size = None if shared_by_patch_sizes(stage) else cfg.model.patch_size
    return run_directory(cfg.paths.log_dir, cfg.experiment_name, stage, patch_size, cfg.seed, trial_of(cfg, stage))


def register_resolvers() -> None:
    """``${adafocus.run_dir:STAGE}``: the run directory of STAGE for this config's experiment, patch size and seed;
    ``${adafocus.point_dir:}``: its sweep point's part, :func:`point_dir`, under ``trials/<key>/`` for a search
    trial's own stage (so each trial's runs get their own W&B group); ``${adafocus.trial_key:}``: the
    :func:`trial_key` of the values this config gives the search's parameters (``search.params``, which the
    search's sweeper sets per trial) (idempotent)."""
    if not OmegaConf.has_resolver("adafocus.run_dir"):
        OmegaConf.register_new_resolver("adafocus.run_dir", lambda stage, *, _root_: run_dir_of(_root_, str(stage)))
    if not OmegaConf.has_resolver("adafocus.point_dir"):
        OmegaConf.register_new_resolver("adafocus.point_dir", _point_dir_of)
    if not OmegaConf.has_resolver("adafocus.trial_key"):
        OmegaConf.register_new_resolver("adafocus.trial_key", lambda *, _root_: trial_key(
            {name: OmegaConf.select(_root_, name) for name in OmegaConf.select(_root_, "search.params") or []}))


def _point_dir_of(*, _root_: Any) -> str:
    point = point_dir(_root_.model.patch_size, _root_.seed)
    trial = trial_of(_root_, str(OmegaConf.select(_root_, "stage.name", default="")))
    return f"{TRIALS}/{trial}/{point}" if trial else point


register_resolvers()
