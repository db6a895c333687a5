"""Timing driver for the OFFICIAL SDAR code (github.com/zhxchd/SDAR_SplitNN, MIT), run by benchmarks/sdar_speed.py
with a Python that has TensorFlow and tf_keras; --repo is a checkout of the official repository (its src/).

Builds the vanilla-split (vsl) CIFAR-10 setting exactly as scripts/run_sdar.py does
(same load_config, same SDARAttacker, same model builders, num_class=10, batch_size=128,
conditional=True, u_shape=False, width="standard", no defense), but feeds random data of
CIFAR-10's shapes/dtypes through the official data.make_dataset pipeline instead of
downloading CIFAR-10. It then calls the official SDARAttacker.run(...) for N iterations and
prints `official s/it: X` = mean wall-clock seconds per iteration over iterations 2..N.

Usage:
    TF_USE_LEGACY_KERAS=1 PY sdar_official_timing.py --repo PATH/TO/SDAR_SplitNN --iters N --level 7 --model resnet
"""
import argparse
import os
import sys
import time

# Same as scripts/run_sdar.py (only hides TF C++ logging); can be overridden from the shell.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# tf.keras must be the legacy Keras 2 (tf_keras) API that the TF 2.9-era code was written for.
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

parser = argparse.ArgumentParser(description='Time the official SDAR training loop on random CIFAR-10-shaped data.')
parser.add_argument('--repo', required=True, help='a checkout of zhxchd/SDAR_SplitNN')
parser.add_argument('--iters', type=int, default=20, help='number of training iterations N (>= 2)')
parser.add_argument('--level', type=int, default=7, choices=[4, 5, 6, 7, 8, 9])
parser.add_argument('--model', type=str, default='resnet', choices=['resnet', 'plainnet'])
parser.add_argument('--n_private', type=int, default=2560)
parser.add_argument('--n_aux', type=int, default=2560)
parser.add_argument('--seed', type=int, default=0)
args = parser.parse_args()
if args.iters < 2:
    raise SystemExit('--iters must be >= 2 (iteration 1 includes graph tracing and is excluded)')

import numpy as np
import tensorflow as tf
import tf_keras

# --- compatibility shim ------------------------------------------------------------------
# The official files mix `from tensorflow import keras` / `tensorflow.keras.optimizers` with
# bare `from keras import layers`, `from keras.regularizers import L1L2` and
# `from keras.losses import ...`. With TF 2.9 both names were the same Keras 2 package.
# Under TF 2.21, TF_USE_LEGACY_KERAS=1 makes `tf.keras` = tf_keras (Keras 2), but bare
# `import keras` would load Keras 3, whose layers cannot be mixed with tf_keras models
# (and Keras 3 has no `Layer.output_shape`, which sdar.py uses). So the bare name `keras`
# is pointed at tf_keras before the official modules are imported. No official file is edited.
assert tf.keras.__name__.startswith('tf_keras'), (
    'tf.keras is not tf_keras; run with TF_USE_LEGACY_KERAS=1 set before Python starts')
sys.modules['keras'] = tf_keras
for _sub in ('layers', 'regularizers', 'losses', 'models', 'optimizers', 'metrics'):
    sys.modules['keras.' + _sub] = getattr(tf_keras, _sub)
# ----------------------------------------------------------------------------------------

# same as `sys.path.append('../src')` in scripts/run_sdar.py, but independent of the cwd
sys.path.append(os.path.join(os.path.abspath(args.repo), 'src'))
import data  # official src/data/__init__.py (only make_dataset is used; nothing is downloaded)
from sdar.sdar import SDARAttacker
from util.util import load_config

# ---- settings exactly as scripts/run_sdar.py computes them for `vsl <model> cifar10 <level>` ----
setting, dataset = 'vsl', 'cifar10'
u_shape = (setting == 'usl')                 # False
conditional = not u_shape                    # True
num_class = 10
batch_size = 128
config = load_config('sdar', args.model, dataset, u_shape)
width, diff_simulator, l1, l2, dropout, alpha = 'standard', False, 0.0, 0.0, 0.0, 0.0
num_iter = args.iters                        # official: 20000 (40000 for level > 7)

# ---- random data with CIFAR-10's shapes/dtypes, through the official pipeline ----
# tf.keras.datasets.cifar10 gives uint8 images (N,32,32,3) and uint8 labels (N,1); the official
# load_dataset casts images to float32 (0..255), then make_dataset maps x -> clip(x/255, 0, 1)
# (so the model sees float32 images in [0,1]) and shuffles with a 1000-element buffer.
rng = np.random.default_rng(args.seed)
def _fake(n):
    x = rng.integers(0, 256, size=(n, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, num_class, size=(n, 1)).astype(np.uint8)
    return x, y
x_client, y_client = _fake(args.n_private)
x_server, y_server = _fake(args.n_aux)
client_ds = data.make_dataset(x_client, y_client, lambda x: tf.clip_by_value(x/255.0, 0., 1.))
server_ds = data.make_dataset(x_server, y_server, lambda x: tf.clip_by_value(x/255.0, 0., 1.))

print(f"TF {tf.__version__}, tf.keras Adam = {tf.keras.optimizers.Adam.__module__}, tf_keras {tf_keras.__version__}; "
      f"intra_op={tf.config.threading.get_intra_op_parallelism_threads()} "
      f"inter_op={tf.config.threading.get_inter_op_parallelism_threads()} (0 = TF default); "
      f"devices={[d.name for d in tf.config.list_physical_devices()]}")
print(f"Start {setting}/{args.model} (random data shaped like {dataset}) at l{args.level} with {config}, "
      f"batch_size={batch_size}, N={num_iter}")

sdar_attacker = SDARAttacker(client_ds, server_ds, num_class=num_class, batch_size=batch_size)

# ---- per-iteration timestamps without touching the official loop ----
# The official run() calls self.fg_train_step exactly once per iteration, as the first step
# after fetching the batch and resetting the metrics. An instance attribute shadows the
# class-level tf.function, so we record a timestamp and then call the original tf.function.
_orig_fg_train_step = sdar_attacker.fg_train_step
_stamps = []
def _timed_fg_train_step(x, y):
    _stamps.append(time.perf_counter())
    return _orig_fg_train_step(x, y)
sdar_attacker.fg_train_step = _timed_fg_train_step

t0 = time.perf_counter()
history = sdar_attacker.run(level=args.level, num_iter=num_iter, config=config, u_shape=u_shape,
                            conditional=conditional, model_type=args.model, width=width,
                            diff_simulator=diff_simulator, l1=l1, l2=l2, dropout=dropout,
                            alpha=alpha, verbose_freq=100)
t_end = time.perf_counter()

assert len(_stamps) == num_iter, (len(_stamps), num_iter)
first_it = _stamps[1] - _stamps[0]
steady = (t_end - _stamps[1]) / (num_iter - 1)
print(f"iteration 1 (incl. model build/tracing): {first_it:.3f} s; run() total incl. model building: "
      f"{t_end - t0:.3f} s")
print(f"last-iteration logs: fg_loss={history['fg_loss'][-1]:.4f} e_loss={history['e_loss'][-1]:.4f} "
      f"d_loss={history['d_loss'][-1]:.4f} attack_loss={history['attack_loss'][-1]:.4f}")
print(f"official s/it: {steady:.4f}")
