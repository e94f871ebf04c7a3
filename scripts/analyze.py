#!/usr/bin/env python
"""gradflow_jax command line. Intentionally short: all logic lives in the library.

Run ``python scripts/analyze.py --help`` for the subcommands.
"""

from gradflow_jax.cli._cli import script_main

if __name__ == "__main__":
  script_main()
