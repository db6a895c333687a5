"""Times the official FSHA code (pasquini-dario/SplitNN_FSHA, TensorFlow) as its notebook runs it: ``FSHA.FSHA`` with
the notebook's hyper-parameters, random MNIST-shaped data (the speed does not depend on the data), whole calls
``fsha(n)`` timed for each ``n`` in ``--iters`` after two untimed calls (tracing the ``tf.function`` and its
first, slow, executions).

Run by ``benchmarks/fsha_speed.py`` with a Python that has TensorFlow; prints one JSON line
``{"seconds": {n: seconds of fsha(n)}, "step_seconds": {n: seconds per step within fsha(n), from the end of its
first step to the end of its last}, "tensorflow": version}``. The calls' start-up (a new ``tf.data`` iterator) varies
by tens of seconds from call to call, so the slope between two calls is noisy; the steps within a call are not.

    python fsha_official_timing.py --repo PATH/TO/SplitNN_FSHA --level 4 --batch-size 64 --iters 20,60
"""
import argparse
import json
import sys
import time
import types


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repo", required=True)
    p.add_argument("--level", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--iters", default="20,60")
    args = p.parse_args()
    sys.path.insert(0, args.repo)
    # datasets.py (imported by FSHA.py) loads tensorflow_datasets at import time; the timing never uses it
    sys.modules.setdefault("tensorflow_datasets", types.ModuleType("tensorflow_datasets"))
    import FSHA
    import numpy as np
    import tensorflow as tf

    counts = [int(n) for n in args.iters.split(",")]
    rng = np.random.default_rng(0)
    n = args.batch_size * (max(counts) + 8)

    def data(k):
        x = rng.uniform(-1, 1, size=(k, 32, 32, 3)).astype(np.float32)
        return tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(x),
                                    tf.data.Dataset.from_tensor_slices(np.zeros(k, np.int64))))

    hparams = {"WGAN": True, "gradient_penalty": 500.0, "style_loss": None,
               "lr_f": 1e-5, "lr_tilde": 1e-5, "lr_D": 1e-4}  # the notebook's
    fsha = FSHA.FSHA(data(n), data(n), args.level - 1, args.batch_size, hparams)
    for _ in range(2):  # traces train_step and runs the first (slow) executions of its graph
        fsha(3, log_frequency=3, progress_bar=False)
    step, stamps = fsha.train_step, []

    def timed_step(*batch):  # each step waited for and stamped: the steady state without the call's start-up
        out = step(*batch)
        [o.numpy() for o in tf.nest.flatten(out)]
        stamps.append(time.perf_counter())
        return out

    fsha.train_step = timed_step
    seconds, steps = {}, {}
    for k in counts:
        stamps.clear()
        t = time.perf_counter()
        fsha(k, log_frequency=k, progress_bar=False)
        seconds[k] = time.perf_counter() - t
        steps[k] = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    print(json.dumps({"seconds": seconds, "step_seconds": steps, "tensorflow": tf.__version__}))


if __name__ == "__main__":
    main()
