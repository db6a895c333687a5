#!/usr/bin/env python
"""SDAR demo (Zhu et al., NDSS'25): an honest-but-curious server reconstructs the client's private CIFAR-10 images
from the smashed data, with a simulator of the client's front and a decoder regularised adversarially.

    python sdar_demo.py cifar --level 7              (or the console script: unsplit-sdar cifar --level 7)
    python sdar_demo.py cifar --level 4 --iters 500
"""
from unsplit.demos.sdar import cli

if __name__ == "__main__":
    cli()
