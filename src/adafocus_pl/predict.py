"""Predict the action in video files: ``python -m adafocus_pl.predict VIDEO [VIDEO...] ckpt_path=PATH [KEY=VALUE...]
[-- VIDEO...]``.

Prints the top-k classes of each video and writes ``<file name>.png`` (the sampled frames with the chosen patch
drawn on each, AdaFocus+'s skipped frames marked) and ``<file name>.json`` to ``predict.out_dir`` (default:
``<checkpoint's run dir>/predict``), e.g. ``bikes.mp4.png``. A name that already belongs to another video (two
``clip.mp4`` in different folders, or an earlier call's output) gets ``-2``, ``-3``, ... appended: no video's
outputs replace another's; predicting the same video again replaces its own. The training run's overrides are read
from the run directory, so a checkpoint that stayed in its run directory needs nothing else; otherwise give the
data overrides it was trained with. Keys: ``conf/predict.yaml``; the work is done in
:mod:`adafocus_pl.inference.predict`.

Arguments: an argument that names an existing file is a video; everything after ``--`` is a video (overrides go
before it); otherwise an argument with ``=`` is a Hydra override (``KEY=VALUE``), and one without is a video
(reported as missing). So ``watch?v=abc.mp4`` is a video when it exists; a video that does not exist (yet) and has
``=`` in its name goes after ``--``. Options: ``--traceback`` shows the full Python traceback of each error (for bug
reports).

Online (``predict.online=true``; AdaFocus / AdaFocus+ checkpoints): the network steps frame by frame over the same
frames, decoded one at a time, printing a line per step (frames read, the top-1 class, the confidence, the patch,
AdaFocus+'s f_L kept / skipped); its last step's prediction is the offline one. ``predict.online_stride=k`` feeds
every k-th frame instead (a stream-like run: the video's frame count / k steps). Early exit
(``predict.exit_budget=B``, the thresholds ``python -m adafocus_pl.eval`` solved for budget B, read from
``<run dir>/eval/results.json`` or ``predict.exit_from``; or ``predict.exit_thresholds=[...]``) implies the online
run: it stops reading the video at the first step whose confidence passes its threshold, predicts from that step,
and says how many frames and GFLOPs it used against the full video (``predict.exit_stop=false`` reads every frame
all the same and only marks the step). Work: :mod:`adafocus_pl.inference.online`.

Each video is predicted on its own: a missing, unreadable, non-video or too short one (fewer than
``data.min_frames`` frames, default 3, as in training) is reported in one line and the others are still predicted.
Exit status: 0 when every video was predicted, 1 when some could not be (a summary at the end names them), 2 for a
usage error or a problem with the checkpoint, the overrides or the options (one line on stderr, nothing predicted).
"""

from __future__ import annotations

import pickle
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from adafocus_pl.utils.config import compose

USAGE = ("usage: python -m adafocus_pl.predict [--traceback] VIDEO [VIDEO...] ckpt_path=PATH [KEY=VALUE...] "
         "[-- VIDEO...]")
HELP = USAGE + "\n\n" + __doc__
OPTIONS = ("-h", "--help", "--traceback")
EXIT_FAILED_VIDEOS, EXIT_USER_ERROR = 1, 2


class UserError(Exception):
    """A problem with the command line, the checkpoint, the overrides or the options: reported in one line (the
    exception it came from is its ``__cause__``, shown with ``--traceback``); ``usage``: the usage line follows."""

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage


@dataclass
class Arguments:
    videos: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    help: bool = False
    traceback: bool = False


def parse_args(args: Sequence[str]) -> Arguments:
    """Split the command line into videos, Hydra overrides and options (the rules are in the module docstring)."""
    parsed = Arguments()
    args = list(args)
    for k, arg in enumerate(args):
        if arg == "--":
            parsed.videos += args[k + 1:]
            break
        if Path(arg).is_file():
            parsed.videos.append(arg)
        elif arg in ("-h", "--help"):
            parsed.help = True
        elif arg == "--traceback":
            parsed.traceback = True
        elif "=" in arg:
            parsed.overrides.append(arg)
        elif arg.startswith("-") and len(arg) > 1:
            raise UserError(f"unknown option {arg} (options: {', '.join(OPTIONS)}; a video whose name starts with "
                            f"'-' goes after --)", usage=True)
        else:
            parsed.videos.append(arg)
    return parsed


def one_line(message: object) -> str:
    """A (Hydra, OmegaConf) multi-line message as one line, without its pointers to documentation."""
    lines = []
    for line in str(message).splitlines():
        if line.startswith("Config search path"):
            break
        line = " ".join(line.split())
        if line.startswith("full_key:"):  # OmegaConf's: the key the message is about
            lines.append(f"({line})")
        elif line and not line.startswith(("See https://", "object_type=")):
            lines.append(line)
    return " ".join(lines)


@dataclass
class Outcome:
    results: list[dict[str, Any]]  # Prediction.as_dict() of each predicted video, in the order given
    failures: list[tuple[str, str]]  # (video, reason) of each video that could not be predicted
    out_dir: Path


def _check_overrides(overrides: Sequence[str]) -> None:
    """Parse each override on its own, so that a syntax error names the override it is in."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except HydraException as err:
            raise UserError(f"cannot parse the override {override!r} ({one_line(err)}); a name with '=' is read as "
                            f"a video only when that file exists or when it comes after --") from err


def _check_options(options) -> None:
    from adafocus_pl.inference.fast import BACKENDS

    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not whole(options.top_k) or options.top_k < 1:
        raise UserError(f"predict.top_k={options.top_k}: give a whole number >= 1")
    if options.backend not in BACKENDS:
        raise UserError(f"predict.backend={options.backend}: use one of {', '.join(BACKENDS)}")
    rho = options.rho
    if rho is not None and (isinstance(rho, bool) or not isinstance(rho, (int, float))):
        raise UserError(f"predict.rho={rho}: give a number (AdaFocus+'s rho) or null")
    if not whole(options.seed):
        raise UserError(f"predict.seed={options.seed}: give a whole number")
    if not isinstance(options.device, str):
        raise UserError(f"predict.device={options.device}: use auto, cpu or cuda[:N]")
    if not isinstance(options.online, bool) or not isinstance(options.exit_stop, bool):
        raise UserError(f"predict.online={options.online}, predict.exit_stop={options.exit_stop}: give true or false")
    stride = options.online_stride
    if stride is not None and (not whole(stride) or stride < 1):
        raise UserError(f"predict.online_stride={stride}: give a whole number >= 1 (feed every k-th frame) or null")
    budget = options.exit_budget
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not 0 < budget <= 1):
        raise UserError(f"predict.exit_budget={budget}: give a fraction of the full model's GFLOPs in (0, 1], e.g. "
                        f"0.6, or null")
    if budget is not None and options.exit_thresholds is not None:
        raise UserError("give predict.exit_budget (thresholds read from eval's results) or predict.exit_thresholds, "
                        "not both")
    if options.exit_from is not None and budget is None:
        raise UserError(f"predict.exit_from={options.exit_from} says where to read predict.exit_budget's thresholds: "
                        f"set predict.exit_budget too")


def _exit_rule(options, ckpt_path: Path, rho: float | None):
    """``(rule, rho)``: the early-exit rule of ``predict.exit_thresholds`` or ``predict.exit_budget`` (read from
    eval's results: ``predict.exit_from``, default ``<run dir>/eval/results.json``), or None, and the AdaFocus+ rho
    to run with. Thresholds hold for the rho eval solved them with: without ``predict.rho`` an AdaFocus+ checkpoint
    runs with eval's rho nearest to its own (rho solved after Stage III+ and in eval differ slightly)."""
    from adafocus_pl.eval import default_out_dir
    from adafocus_pl.inference.early_exit import ExitRule
    from adafocus_pl.inference.online import exit_row_from_results

    if options.exit_thresholds is not None:
        values = options.exit_thresholds
        try:
            values = list(values)
        except TypeError:
            values = None
        if not values or any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))
                             for v in values):
            raise UserError(f"predict.exit_thresholds={options.exit_thresholds}: give one confidence per frame, "
                            f"[c_1, ..., c_T] (numbers; null for -inf, e.g. the last)")
        return ExitRule.from_dict({"thresholds": values, "budget": None}), rho
    if options.exit_budget is None:
        return None, rho
    path = Path(options.exit_from) if options.exit_from else default_out_dir(ckpt_path) / "results.json"
    try:
        row = exit_row_from_results(path, float(options.exit_budget), rho,
                                    eval_command=f"python -m adafocus_pl.eval ckpt_path={ckpt_path}",
                                    nearest_rho=options.rho is None)
    except (OSError, ValueError) as err:
        raise UserError(one_line(err)) from err
    if row["rho"] is not None and rho is not None and row["rho"] != rho:
        print(f"[predict] AdaFocus+ runs at rho={row['rho']:.6g}, the threshold eval solved the early-exit rule with "
              f"(the checkpoint's rho is {rho:.6g}; predict.rho=... picks another of eval's)", file=sys.stderr)
    return ExitRule.from_dict(row), row["rho"] if rho is not None else rho


def _setup(overrides: list[str]):
    """(Predictor, out_dir) for the checkpoint and overrides; raises UserError for anything a user has to fix."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from adafocus_pl.checkpoint import CheckpointError, load_checkpoint
    from adafocus_pl.inference.online import check_steps_online
    from adafocus_pl.inference.predict import Predictor, run_dir_of, saved_overrides
    from adafocus_pl.utils.device import resolve_device

    ckpt_arg = next((o.split("=", 1)[1] for o in overrides if o.startswith("ckpt_path=")), None)
    if not ckpt_arg:
        raise UserError("no checkpoint: give ckpt_path=PATH (a stage checkpoint, e.g. <run dir>/checkpoints/last.ckpt)",
                        usage=True)
    _check_overrides(overrides)
    ckpt_path = Path(ckpt_arg)
    try:
        ckpt = load_checkpoint(ckpt_path)
    except (FileNotFoundError, CheckpointError) as err:
        raise UserError(one_line(err)) from err
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        # a directory, a truncated or foreign file, a file of another network version
        raise UserError(f"cannot read the checkpoint ckpt_path={ckpt_path} ({type(err).__name__}: {one_line(err)}); "
                        f"give a stage checkpoint (<run dir>/checkpoints/last.ckpt)") from err
    try:
        cfg = compose("predict", saved_overrides(ckpt_path) + overrides)
        if ckpt.net.num_classes != cfg.data.num_classes:
            raise UserError(f"{ckpt_path} has {ckpt.net.num_classes} classes but data={cfg.data.name} has "
                            f"{cfg.data.num_classes}: pass the data overrides the checkpoint was trained with")
        OmegaConf.to_container(cfg.data, resolve=True)  # an interpolation error now, not at the first video
        options = cfg.predict
        _check_options(options)
        try:
            device = resolve_device(options.device, "predict.device")
        except ValueError as err:  # a CUDA device without a GPU
            raise UserError(one_line(err)) from err
        except RuntimeError as err:  # not a device name (torch.device("gpu"))
            raise UserError(f"predict.device={options.device}: use auto, cpu or cuda[:N] ({one_line(err)})") from err
        try:
            predictor = Predictor(ckpt, cfg.data, top_k=options.top_k, backend=options.backend, device=device,
                                  rho=options.rho, seed=options.seed)
        except ValueError as err:
            raise UserError(one_line(err)) from err
        # an exit rule implies the online run: early exit is a decision made after each frame
        if options.online or any(options[k] is not None for k in ("online_stride", "exit_budget", "exit_thresholds")):
            try:
                check_steps_online(ckpt.net)  # before looking for exit thresholds it could not use
                rule, predictor.rho = _exit_rule(options, ckpt_path, predictor.rho)
                predictor.go_online(options.online_stride, rule, options.exit_stop)
            except ValueError as err:
                raise UserError(one_line(err)) from err
        out_dir = Path(options.out_dir) if options.out_dir else run_dir_of(ckpt_path) / "predict"
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(one_line(err)) from err
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the output folder {out_dir} ({err.strerror or err}): set predict.out_dir") \
            from err
    return predictor, out_dir


def predict_videos(videos: Sequence[str], overrides: Sequence[str], show_traceback: bool = False) -> Outcome:
    """Predict each video, writing its outputs (see the module docstring) and printing its table on stdout.

    A video that cannot be read is reported on stderr (one line: the video and the reason; with
    ``show_traceback`` also its traceback) and listed in ``Outcome.failures``; the next video is predicted all the
    same. Raises :class:`UserError` (nothing predicted) for a problem with the checkpoint, overrides or options.
    """
    from adafocus_pl.data.datasets import LOAD_ERRORS
    from adafocus_pl.inference.online import format_step
    from adafocus_pl.inference.predict import OutputNames, format_prediction, read_video

    predictor, out_dir = _setup(list(overrides))
    names = OutputNames(out_dir)
    results, failures = [], []

    def failed(video: str, err: Exception) -> None:
        if show_traceback:
            traceback.print_exception(err)
        reason = one_line(err)
        print(f"error: cannot predict {video}: {reason}", file=sys.stderr, flush=True)
        failures.append((video, reason))

    def print_step(result, frames) -> None:
        if result.step == 0:
            what = "segment centres" if frames.stride is None else f"one frame in {frames.stride}"
            print(f"{frames.path} (online, {what}: {frames.steps} steps over {frames.num_frames} frames):",
                  flush=True)
        print(format_step(result, frames.steps, frames.num_frames), flush=True)

    for video in videos:
        if predictor.recognizer is not None:  # online: frames are read as the network steps
            try:
                prediction = predictor.predict_online(video, out_dir, names(video), on_step=print_step)
            except LOAD_ERRORS as err:  # unreadable, too short, or writing its outputs
                failed(video, err)
                continue
            print(format_prediction(prediction), flush=True)
            results.append(prediction.as_dict())
            continue
        try:
            sample = read_video(video, predictor.data_cfg, predictor.net.num_classes)
        except LOAD_ERRORS as err:  # missing, unreadable, not a video, too short
            failed(video, err)
            continue
        try:
            prediction = predictor.predict(video, sample, out_dir, names(video))
        except OSError as err:  # writing its outputs
            failed(video, err)
            continue
        print(format_prediction(prediction), flush=True)
        results.append(prediction.as_dict())
    return Outcome(results, failures, out_dir)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """The command line: returns the results (``Prediction.as_dict()`` per video) when every video was predicted;
    raises ``SystemExit(1)`` when some were not (after predicting the others), ``SystemExit(2)`` for a user error."""
    args = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in args[:args.index("--") if "--" in args else len(args)]
    try:
        parsed = parse_args(args)
        if parsed.help:
            print(HELP)
            print("Keys (conf/predict.yaml):\n" + OmegaConf.to_yaml(compose("predict", ["ckpt_path=PATH"]).predict))
            return []
        if not parsed.videos:
            raise UserError("no video given", usage=True)
        outcome = predict_videos(parsed.videos, parsed.overrides, show_traceback=parsed.traceback)
    except UserError as err:
        if show_traceback:
            traceback.print_exception(err)
        print(f"error: {err}" + (f"\n{USAGE} (see --help)" if err.usage else ""), file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    if outcome.failures:
        failed = ", ".join(video for video, _ in outcome.failures)
        print(f"predicted {len(outcome.results)} of {len(parsed.videos)} videos (outputs in {outcome.out_dir}); "
              f"failed: {failed}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED_VIDEOS)
    print(f"predicted {len(outcome.results)} video{'s' if len(outcome.results) != 1 else ''} "
          f"(outputs in {outcome.out_dir})")
    return outcome.results


if __name__ == "__main__":
    main()
