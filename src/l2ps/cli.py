"""The ``l2ps`` command.

  l2ps parameter FILE            write a complete, commented LEVEL2 parameter file
  l2ps queue DIR... -o QUEUE     build or extend a queue from folders of Level-1 products
  l2ps level2 IMAGE PRM          process one image without Snakemake (FORCE's force-l2ps)
  l2ps mask IMAGE PRM            cloud/shadow/snow/water masks of one image
  l2ps report DIR_LOG            HTML run report (one row per image) of a log folder
  l2ps synth ...                 write synthetic Level-1 products with known truth
  l2ps demo DIR                  make the built-in demo (synthetic images, queue, parameters)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import L2psError


def _cmd_parameter(args) -> int:
    from .params import write_skeleton
    path = Path(args.file)
    if path.exists() and not args.force:
        print(f"l2ps parameter: {path} exists; use --force to overwrite", file=sys.stderr)
        return 2
    write_skeleton(path)
    print(f"wrote {path}")
    return 0


def _cmd_queue(args) -> int:
    from .level1 import find_level1
    from .queue import append_entries
    found: list[Path] = []
    for d in args.dirs:
        d = Path(d)
        if not d.exists():
            print(f"l2ps queue: {d} does not exist", file=sys.stderr)
            return 2
        found.extend(find_level1([d]))
    added = append_entries(args.output, sorted(found))
    print(f"{len(found)} Level-1 product(s) found, {len(added)} added to {args.output} "
          f"({len(found) - len(added)} already listed)")
    return 0


def _cmd_level2(args) -> int:
    from .job import run_job
    return run_job(args.image, args.parameter_file, nthreads=args.threads,
                   update_queue=not args.no_queue)


def _cmd_mask(args) -> int:
    """Cloud, shadow, snow and water masks of one image (the front half of the chain)."""
    from .clouds import detect_clouds
    from .level1 import check_tier, open_level1
    from .masks import write_masks
    from .params import read_parameters
    from .pipeline import prepare_scene
    params = read_parameters(args.parameter_file)
    out = Path(args.output) if args.output else Path(params.dir_level2)
    with open_level1(Path(args.image), tempdir=params.dir_temp) as level1:
        check_tier(level1, params.tier)
        scene = prepare_scene(level1, params)
        result = detect_clouds(scene, params)
        files = write_masks(scene, params, out)
    print(result.log_fragment.strip())
    for f in files:
        print(f)
    return 0


def _cmd_report(args) -> int:
    from .report import write_report
    print(write_report(Path(args.dir_log), Path(args.output) if args.output else None))
    return 0


def _cmd_demo(args) -> int:
    from .demo import make_demo
    prm = make_demo(Path(args.dir), seed=args.seed)
    print(f"demo ready: parameter file {prm}")
    return 0


def _cmd_demo_summary(args) -> int:
    from .demo import summarize_demo
    print(summarize_demo(Path(args.dir)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2ps", description="Level 2 Processing System for "
                                "Landsat 4-9 and Sentinel-2 A/B/C (FORCE-compatible ARD cubes)")
    p.add_argument("--version", action="version", version=f"l2ps {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("parameter", help="write a complete, commented LEVEL2 parameter file")
    s.add_argument("file")
    s.add_argument("--force", action="store_true", help="overwrite an existing file")
    s.set_defaults(func=_cmd_parameter)

    s = sub.add_parser("queue", help="build or extend a queue from folders of Level-1 products")
    s.add_argument("dirs", nargs="+", metavar="DIR")
    s.add_argument("-o", "--output", required=True, help="queue file (created or extended)")
    s.set_defaults(func=_cmd_queue)

    s = sub.add_parser("level2", help="process one Level-1 image (no Snakemake)")
    s.add_argument("image")
    s.add_argument("parameter_file")
    s.add_argument("--threads", type=int, default=None, help="override NTHREAD")
    s.add_argument("--no-queue", action="store_true", help="do not update FILE_QUEUE")
    s.set_defaults(func=_cmd_level2)

    s = sub.add_parser("mask", help="cloud/shadow/snow/water masks (QAI) of one image, "
                       "in its own grid")
    s.add_argument("image")
    s.add_argument("parameter_file")
    s.add_argument("-o", "--output", default=None, help="output folder (default DIR_LEVEL2)")
    s.set_defaults(func=_cmd_mask)

    s = sub.add_parser("report", help="write the HTML run report of a log folder (DIR_LOG)")
    s.add_argument("dir_log")
    s.add_argument("-o", "--output", default=None, help="HTML file (default: DIR_LOG/report/)")
    s.set_defaults(func=_cmd_report)

    try:
        from .synth import cli as synth_cli
        synth_cli.add_parser(sub)
    except ImportError:  # generator not available in this installation
        pass

    s = sub.add_parser("demo", help="make the built-in demo: synthetic images, queue, parameters")
    s.add_argument("dir")
    s.add_argument("--seed", type=int, default=1)
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("demo-summary", help=argparse.SUPPRESS)
    s.add_argument("dir")
    s.set_defaults(func=_cmd_demo_summary)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except L2psError as exc:
        print(f"l2ps {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
