#!/usr/bin/env python
"""SLADV demo (Fan et al., ECAI'23): a server holding only the middle of a U-shaped split crafts adversarial examples.

Trains (or loads) the victim with split learning on the client's CIFAR-10 images (the first 40,000, as the authors'
scaffold), records what the server sees of the client's smashed data, fits a shadow front on the attacker's own
1,024 unlabeled images, attacks the first test images through shadow front + real middle, and scores the whole
model on them beside same-eps random noise, white-box PGD (the upper bound) and PGD transferred from a surrogate
trained on the attacker's images with labels.

    python sladv_demo.py cifar                (or the console script: unsplit-sladv cifar)
    python sladv_demo.py cifar --split 3 --shadow multi --shadow-data cifar-iid --eps 4
"""
from unsplit.demos.sladv import cli

if __name__ == "__main__":
    cli()
