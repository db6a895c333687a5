"""unsplit: faithful, fast reproductions of attacks on split learning and the defenses they were tested against.

Modules:
    unsplit.attacks   UnSplit model inversion + model stealing, label inference (Erdogan et al., WPES'22)
    unsplit.models    splittable reference networks and ``split(model, depth)``
    unsplit.training  split-learning training loop with observable cuts, malicious-server and defense hooks
    unsplit.data      MNIST / Fashion-MNIST / CIFAR-10 as tensors, online or from offline copies
    unsplit.util      regularisers, image metrics, atomic result files
"""
__version__ = "0.1.0"
