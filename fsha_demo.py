#!/usr/bin/env python
"""FSHA, the feature-space hijacking attack (Pasquini, Ateniese, Bernaschi, CCS'21).

The code is :mod:`unsplit.demos.fsha` (console entry point ``unsplit-fsha``); ``--help`` lists the options.

    python fsha_demo.py mnist --iters 3000
    python fsha_demo.py mnist --variant nopeek          # the client runs NoPeek (alpha1 1e4); the attacker scales by 50
"""
from unsplit.demos.fsha import cli, main, parse_args  # noqa: F401  (main, parse_args: as the script had them)

if __name__ == "__main__":
    cli()
