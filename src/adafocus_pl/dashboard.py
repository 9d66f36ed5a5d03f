"""W&B dashboards from code: ``python -m adafocus_pl.dashboard DIR [--project P] [--entity E] [--out SPEC] [--dry-run]``.

For the runs logged under DIR (an experiment's log directory, e.g. ``logs/synthetic``), builds the workspace and the
report "AdaFocus vs AdaFocus+" (:mod:`adafocus_pl.evaluation.dashboard`) and always writes the spec it would save
(JSON, default ``DIR/dashboard/spec.json``). With a W&B login (``wandb login`` or ``WANDB_API_KEY``) and without
``--dry-run`` it saves both to the project, and later calls update them in place (their URLs are kept in
``DIR/dashboard/published.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def publish(dashboard, entity: str | None, record: Path) -> dict[str, str]:
    """Save the workspace and the report to W&B, updating the ones a previous call saved (``record``)."""
    import wandb
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    # bound to the entity: the run sets resolve their project (the runs are not read again)
    fresh = dashboard.bound_to(entity or wandb.Api().default_entity)
    workspace, report = fresh.workspace, fresh.report
    saved = json.loads(record.read_text()) if record.is_file() else {}
    if saved.get("workspace"):  # update the saved view in place instead of adding another
        workspace = ws.Workspace.from_url(saved["workspace"])
        workspace.sections, workspace.runset_settings = fresh.workspace.sections, fresh.workspace.runset_settings
        workspace.settings = fresh.workspace.settings
    if saved.get("report"):
        report = wr.Report.from_url(saved["report"])
        report.blocks, report.description = fresh.report.blocks, fresh.report.description
    workspace.save()
    report.save()
    urls = {"workspace": workspace.url, "report": report.url}
    record.write_text(json.dumps(urls, indent=2))
    return urls


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m adafocus_pl.dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("dir", type=Path, help="an experiment's log directory, e.g. logs/synthetic")
    parser.add_argument("--project", default=None, help="W&B project (default: the one the runs under DIR log to)")
    parser.add_argument("--entity", default=None, help="W&B entity to save to (default: the login's)")
    parser.add_argument("--out", type=Path, default=None, help="the spec's JSON file (default: DIR/dashboard/spec.json)")
    parser.add_argument("--dry-run", action="store_true", help="write the spec only, even with a W&B login")
    args = parser.parse_args(argv)

    from adafocus_pl.evaluation.dashboard import build_dashboard
    from adafocus_pl.utils.wandb_run import has_wandb_key

    try:
        dashboard = build_dashboard(args.dir, args.project, args.entity or "")
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None
    out = args.out or args.dir / "dashboard" / "spec.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = dashboard.spec()
    out.write_text(json.dumps(spec, indent=2))
    print(f"[dashboard] W&B project {dashboard.project}: {len(dashboard.runs)} runs under {args.dir}")
    for runset in spec["run_sets"]:
        print(f"  run set {runset['name']!r}: {len(runset['selects'])} runs")
    panels = sum(len(s["panels"]) for s in spec["sections"])
    print(f"  report {spec['title']!r}: {len(spec['sections'])} sections, {panels} panels; spec: {out}")
    if args.dry_run or not has_wandb_key():
        print("[dashboard] not saved to W&B (" + ("--dry-run" if args.dry_run else "no W&B login") + "). To publish: "
              f"`wandb login`, upload the offline runs (`wandb sync $(find {args.dir} -type d -name 'offline-run-*')`), "
              f"then run `python -m adafocus_pl.dashboard {args.dir}` again.")
        return out
    urls = publish(dashboard, args.entity, out.parent / "published.json")
    print(f"[dashboard] saved: workspace {urls['workspace']}\n            report {urls['report']}")
    return out


if __name__ == "__main__":
    main()
