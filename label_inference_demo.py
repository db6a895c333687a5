#!/usr/bin/env python
"""Label inference demo: UnSplit (Erdogan et al., WPES'22) and similarity attacks (Liu et al., TIFS 2024).

The code is :mod:`unsplit.demos.labels` (console entry point ``unsplit-labels``); ``--help`` lists the options.

    python label_inference_demo.py cifar
"""
from unsplit.demos.labels import cli

if __name__ == "__main__":
    cli()
