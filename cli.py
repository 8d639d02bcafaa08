"""The `streamvace` command line (also `python -m streamvace`)."""

import argparse
import sys


def _info(args) -> int:
    """Print the version, the registered nodes and the compute devices."""
    import torch

    from . import NODE_CLASS_MAPPINGS, __version__
    from .nodes import LOAD_ERRORS

    print(f"StreamVACE {__version__}, torch {torch.__version__}, "
          f"CUDA {'available: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'}")
    print(f"{len(NODE_CLASS_MAPPINGS)} nodes: {', '.join(sorted(NODE_CLASS_MAPPINGS))}")
    for name, error in LOAD_ERRORS.items():
        print(f"node module {name} failed to load: {error}", file=sys.stderr)
    return 1 if LOAD_ERRORS else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="streamvace", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, nodes and devices").set_defaults(run=_info)
    return parser


def main(argv=None) -> int:
    """Run one sub-command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return args.run(args)
