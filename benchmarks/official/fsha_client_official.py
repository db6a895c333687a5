"""Runs the official FSHA malicious-client code (pasquini-dario/SplitNN_FSHA, ``ClientSideAttack/``, TensorFlow) as
its notebook does: one malicious client (target class 1) and 10 honest ones, batch 256, ``Server(...)(iterations)``;
then saves samples of its generator and the honest task's test accuracy.

Resumable: with ``--state DIR`` a run continues from DIR's checkpoint (the shared parts, the server, the generator,
the one Adam the official server applies to all of them; numbered by the rounds it holds) up to ``--iters`` rounds in
all, and saves it again. The official ``Server.__call__`` restarts its batch iterator and its round counter on every
call, so a resumed call reshuffles the data (as a new pass; TensorFlow is seeded by the seed and the rounds done) and
the rounds must be even (the malicious client's generator and poison turns alternate by the counter's parity).

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
    p.add_argument("--state", help="a directory for the checkpoint that makes the run resumable")
    args = p.parse_args()
    sys.path.insert(0, os.path.join(args.repo, "ClientSideAttack"))
    import numpy as np
    import tensorflow as tf

    # the code predates Keras' new optimisers (TF >= 2.11), which refuse a variable list that changes from call to
    # call (the server updates different parts on different turns); the legacy Adam is the one it was written for
    tf.keras.optimizers.Adam = tf.keras.optimizers.legacy.Adam
    import archs
    import clients
    import dataset
    from server import Server

    # the rounds a checkpoint holds are its number (ckpt-<rounds>): one file, so they cannot disagree
    latest = tf.train.latest_checkpoint(args.state) if args.state else None
    done = int(latest.rsplit("-", 1)[1]) if latest else 0
    if done % 2 or (args.state and args.iters % 2):
        sys.exit(f"rounds must be even when resuming (stored {done}, asked {args.iters}): the malicious client's "
                 "generator and poison turns alternate by the official round counter's parity")
    # seeded once, before anything is built, by the seed and the rounds done: a resumed call reshuffles the data and
    # draws new noise (the models' fresh initial weights are overwritten by the restore)
    tf.random.set_seed(args.seed * 1_000_003 + done)
    raw = args.mnist
    x = idx(os.path.join(raw, "train-images-idx3-ubyte")).astype(np.float32)
    y = idx(os.path.join(raw, "train-labels-idx1-ubyte")).astype(np.int64)
    batch_size, f, ff, g = 256, archs.make_f(), archs.make_ff(), archs.make_generator()
    team = [clients.BadClient(f, ff, g, batch_size, 1)] + [clients.Client(f, ff) for _ in range(10)]
    server = Server(archs.make_s, team, dataset.make_dataset(x, y, dataset.parse), batch_size)
    ckpt = None
    if args.state:
        ckpt = tf.train.CheckpointManager(tf.train.Checkpoint(f=f, ff=ff, g=g, s=server.server,
                                                              optimizer=server.optimizer), args.state, 1)
        if latest:
            ckpt.checkpoint.restore(latest).assert_existing_objects_matched()
    rounds = max(args.iters - done, 0)
    start = time.perf_counter()
    if rounds:
        server(rounds)
    seconds = time.perf_counter() - start
    if ckpt is not None and rounds:
        ckpt.save(checkpoint_number=done + rounds)
    samples = np.concatenate([team[0].generate().numpy() for _ in range(-(-args.samples // batch_size))])
    xt = idx(os.path.join(raw, "t10k-images-idx3-ubyte")).astype(np.float32)
    yt = idx(os.path.join(raw, "t10k-labels-idx1-ubyte")).astype(np.int64)
    test = dataset.make_dataset(xt, yt, dataset.parse).batch(1000)
    hits = sum(int(np.sum(np.argmax(ff(server.server(f(a, training=False), training=False), training=False), 1)
                          == b.numpy())) for a, b in test)
    out = {"seconds": seconds, "rounds": rounds, "done": done + rounds, "test_accuracy": hits / len(yt),
           "tensorflow": tf.__version__}
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, samples=samples[:args.samples], **out)
    os.replace(tmp, args.out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
