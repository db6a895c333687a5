#!/usr/bin/env python
"""UnSplit model inversion + model stealing demo (Erdogan, Kupcu, Cicek, WPES'22).

The code is :mod:`unsplit.demos.inversion` (console entry point ``unsplit-inversion``); ``--help`` lists the options.

    python model_inversion_demo.py mnist 3
"""
from unsplit.demos.inversion import cli

if __name__ == "__main__":
    cli()
