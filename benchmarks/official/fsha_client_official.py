"""Runs the official FSHA malicious-client code (pasquini-dario/SplitNN_FSHA, ``ClientSideAttack/``, TensorFlow) as
its notebook does: one malicious client (target class 1) and 10 honest ones, batch 256, ``Server(...)(iterations)``;
then saves samples of its generator.

MNIST comes from the IDX files in torchvision's raw layout (the notebook's ``tf.keras.datasets.mnist`` downloads);
the images pass through the official ``dataset.make_dataset`` / ``parse`` unchanged.

Run by ``benchmarks/fsha_client_vs_official.py`` with a Python that has TensorFlow; writes ``--out`` (an ``.npz``
with ``samples`` ``(N, 28, 28, 1)`` in [-1, 1], ``seconds``, ``tensorflow``) and prints one JSON line.

    python fsha_client_official.py --repo PATH/TO/SplitNN_FSHA --mnist DATA/MNIST/raw --iters 1000 --out s.npz
"""
import argparse
import gzip
import json
import os
import sys
import time


def idx(path):
    import numpy as np

    opener = gzip.open if not os.path.exists(path) else open
    with opener(path if os.path.exists(path) else path + ".gz", "rb") as fh:
        data = fh.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repo", required=True)
    p.add_argument("--mnist", required=True, help="MNIST/raw with train-images-idx3-ubyte, train-labels-idx1-ubyte")
    p.add_argument("--iters", type=int, default=5000)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    sys.path.insert(0, os.path.join(args.repo, "ClientSideAttack"))
    import numpy as np
    import tensorflow as tf

    tf.random.set_seed(args.seed)
    # the code predates Keras' new optimisers (TF >= 2.11), which refuse a variable list that changes from call to
    # call (the server updates different parts on different turns); the legacy Adam is the one it was written for
    tf.keras.optimizers.Adam = tf.keras.optimizers.legacy.Adam
    import archs
    import clients
    import dataset
    from server import Server

    x = idx(os.path.join(args.mnist, "train-images-idx3-ubyte")).astype(np.float32)
    y = idx(os.path.join(args.mnist, "train-labels-idx1-ubyte")).astype(np.int64)
    xpriv = dataset.make_dataset(x, y, dataset.parse)
    batch_size, f, ff, g = 256, archs.make_f(), archs.make_ff(), archs.make_generator()
    team = [clients.BadClient(f, ff, g, batch_size, 1)] + [clients.Client(f, ff) for _ in range(10)]
    start = time.perf_counter()
    Server(archs.make_s, team, xpriv, batch_size)(args.iters)
    seconds = time.perf_counter() - start
    samples = np.concatenate([team[0].generate().numpy() for _ in range(-(-args.samples // batch_size))])
    np.savez(args.out, samples=samples[:args.samples], seconds=seconds, tensorflow=tf.__version__)
    print(json.dumps({"seconds": seconds, "iterations": args.iters, "tensorflow": tf.__version__}))


if __name__ == "__main__":
    main()
