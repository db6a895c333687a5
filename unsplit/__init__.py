"""unsplit: faithful, fast reproductions of attacks on split learning and the defenses they were tested against.

Modules:
    unsplit.attacks   UnSplit model inversion + model stealing, label inference (Erdogan et al., WPES'22)
    unsplit.models    splittable reference networks and ``split(model, depth)``
    unsplit.protocol  the protocol as data: Topology (front / middle / head), CutEvent, SplitCallback, Defense hooks
    unsplit.training  train_split / run_split: split learning with observable cuts, callbacks and defenses
    unsplit.defenses  the defenses (noise, NoPeek, DP-SGD, label DP, top-k, max-norm, Marvell)
    unsplit.experiments  attack cells with metrics, training cases and the trained-model cache
    unsplit.data      MNIST / Fashion-MNIST / CIFAR-10 as tensors, online or from offline copies
    unsplit.util      regularisers, image metrics, atomic result files
"""
__version__ = "0.2.0"
