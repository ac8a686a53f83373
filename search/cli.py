"""Command line: ``python -m search run|validate SPACE`` and ``python -m search resume RUN_DIR``.

Each subcommand calls one library function. Errors a user can fix (``SearchError``) are caught
here only, printed as one line ``ClassName: message``, and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys

from search.errors import EXIT_USER_ERROR, SearchError

EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT; the run can be resumed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search", description="Measured search over a YOLO detector's compression settings.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_space(p: argparse.ArgumentParser) -> None:
        p.add_argument("space", help="search-space YAML file, e.g. spaces/yolov4_tiny.yaml")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key of the space file, e.g. --set budget.trials=4 (repeatable)")

    run = commands.add_parser("run", help="run a search and write its run directory")
    with_space(run)
    run.add_argument("--run-dir", help="where results go (default runs/<name>-<timestamp>/); must not exist")
    run.add_argument("--address", help="an existing Ray cluster (HOST:PORT or 'auto'; default: RAY_ADDRESS, "
                                       "else an embedded local Ray)")
    run.add_argument("--storage", help="a folder every node mounts, or an object-store URI (s3://bucket/prefix, gs://...), "
                                       "for the trials' files and the shared stage cache (same as --set storage.path=...; "
                                       "default: the run directory and cache_dir)")
    resume = commands.add_parser("resume", help="continue a run whose driver was stopped or killed")
    resume.add_argument("run_dir", help="the run directory to continue")
    resume.add_argument("--address", help="the Ray cluster to continue on (default: RAY_ADDRESS, else an embedded local Ray)")
    validate = commands.add_parser("validate", help="check a space file without running anything")
    with_space(validate)
    return parser


def _describe(dimension) -> str:
    if dimension.kind in ("fixed", "choices"):
        return str(list(dimension.values)) if dimension.kind == "choices" else repr(dimension.values[0])
    low, high = (int(dimension.low), int(dimension.high)) if dimension.kind == "int" else (dimension.low, dimension.high)
    return f"{low}..{high}" + (" (log)" if dimension.log else "") + (f" step {dimension.step:g}" if dimension.step else "")


def validate_command(args: argparse.Namespace) -> int:
    from search.space import load_space

    space = load_space(args.space, tuple(args.overrides))
    from search.inputs import check_model_files

    classes = check_model_files(space)  # header and size of Darknet files; no model is built
    dims = ", ".join(f"{d.name}={_describe(d)}" for d in space.search.all())
    dims += f", sparse_encoding={str(space.search.sparse_encoding).lower()}"
    print(f"{space.path}: valid. search: {dims}; objectives: "
          f"{', '.join(f'{o.name} ({o.direction})' for o in space.objectives)}; budget: {space.budget.trials} trials"
          + (f"; model: {space.model.cfg} ({classes} classes)" if classes else ""))
    return 0


def run_command(args: argparse.Namespace) -> int:
    from search.runner import run_search
    from search.space import load_space

    storage = (f"storage.path={args.storage}",) if args.storage else ()
    space = load_space(args.space, (*args.overrides, *storage))
    return _outcome(run_search(space, run_dir=args.run_dir, address=args.address))


def resume_command(args: argparse.Namespace) -> int:
    from search.runner import resume_search

    return _outcome(resume_search(args.run_dir, address=args.address))


EXIT_NO_COMPLETED_TRIAL = 1


def _outcome(result) -> int:
    """0 when the search has a front; 1 when every trial failed (the run is still all on disk)."""
    if result.completed == 0:
        print(f"NoCompletedTrial: all {result.failed} trials failed; their errors are in "
              f"{result.run_dir / 'trials.csv'}", file=sys.stderr)
        return EXIT_NO_COMPLETED_TRIAL
    return 0


COMMANDS = {"run": run_command, "resume": resume_command, "validate": validate_command}


def main(argv: list[str] | None = None) -> int:
    from search.runner import SearchInterrupted

    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SearchError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except SearchInterrupted as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
