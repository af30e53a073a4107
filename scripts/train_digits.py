#!/usr/bin/env python
"""Train the small residual CNN that ships with fxpgen (``fxpgen/models/digits/``).

numpy only: forward and backward passes are written out by hand (im2col for the
convolutions).  Data: scikit-learn's bundled handwritten digits (1797 8x8 images,
pixel values 0..16, 10 classes; no download).

Architecture (batch-1 inference graph, NCHW, input ``input`` [1,1,8,8]):

    conv3x3(1->8, pad 1) + BatchNormalization + Relu                      -> r1
    conv3x3(8->8, pad 1) + BatchNormalization, Add(r1), Relu               -> r2
    MaxPool 2x2 stride 2                                                   -> 8x4x4
    conv3x3(8->16, pad 1) + BatchNormalization + Relu, Flatten             -> 256
    Gemm(256 -> 10)                                                        -> ``logits`` [1,10]

The convolutions have no bias (a bias before BatchNorm is cancelled by the batch mean).
Input scaling: ``x = img / 16 * (255/256) = img * 255 / 4096``, in [0, 255/256], so the
input fits uint8 with 8 fractional bits without saturating (the float32 values are exact).

Training: BatchNorm in training mode (batch statistics; running averages, momentum 0.1,
unbiased running variance, are what is exported), softmax cross-entropy, Adam with a
cosine learning-rate schedule and L2 weight decay on conv/Gemm weights, random +-1 pixel
shifts as augmentation.  Fixed seed; the split is
``train_test_split(test_size=0.2, random_state=0, stratify=y)``.

Export: ``onnx.helper`` only, opset 17, float32 initializers; checked with
``onnx.checker.check_model`` (full check) and ``onnx.reference.ReferenceEvaluator``,
which must reproduce this script's own numpy inference on the whole test set
(max |diff| < 1e-4).  The recorded test accuracy is the ReferenceEvaluator's, batch 1.

Usage:  python scripts/train_digits.py [--out fxpgen/models/digits] [--seed 0] [--epochs 60]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "fxpgen" / "models" / "digits"

BN_EPS = 1e-5
BN_MOMENTUM = 0.1          # running = (1 - m) * running + m * batch   (PyTorch convention)
N_CALIB = 256
OPSET = 17
IR_VERSION = 8             # the IR version that goes with opset 17; readable by older runtimes


# ----------------------------------------------------------------------------- data

def scale_images(img: np.ndarray) -> np.ndarray:
    """0..16 pixel values -> float32 in [0, 255/256]: x = img / 16 * 255/256 (exact in float32)."""
    return (np.asarray(img, dtype=np.float64) * 255.0 / 4096.0).astype(np.float32)


def load_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = scale_images(d.images).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_tr, x_te, y_tr, y_te


# ----------------------------------------------------------------------------- layers

def im2col3(x: np.ndarray) -> np.ndarray:
    """(B,C,H,W) -> (B*H*W, C*9) patches of a 3x3, pad 1, stride 1 conv; columns (c, kh, kw)."""
    b, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    p = np.empty((b, c, 3, 3, h, w), dtype=x.dtype)
    for kh in range(3):
        for kw in range(3):
            p[:, :, kh, kw] = xp[:, :, kh:kh + h, kw:kw + w]
    return p.transpose(0, 4, 5, 1, 2, 3).reshape(b * h * w, c * 9)


def col2im3(dcols: np.ndarray, shape) -> np.ndarray:
    """Adjoint of im2col3."""
    b, c, h, w = shape
    dp = dcols.reshape(b, h, w, c, 3, 3).transpose(0, 3, 4, 5, 1, 2)
    dxp = np.zeros((b, c, h + 2, w + 2), dtype=dcols.dtype)
    for kh in range(3):
        for kw in range(3):
            dxp[:, :, kh:kh + h, kw:kw + w] += dp[:, :, kh, kw]
    return dxp[:, :, 1:-1, 1:-1]


def conv_fwd(x, w):
    b, c, h, wd = x.shape
    cols = im2col3(x)
    out = cols @ w.reshape(w.shape[0], -1).T
    return out.reshape(b, h, wd, w.shape[0]).transpose(0, 3, 1, 2), (cols, x.shape)


def conv_bwd(dout, w, cache):
    cols, xshape = cache
    dmat = dout.transpose(0, 2, 3, 1).reshape(-1, w.shape[0])
    dw = (dmat.T @ cols).reshape(w.shape)
    dx = col2im3(dmat @ w.reshape(w.shape[0], -1), xshape)
    return dx, dw


def bn_train_fwd(x, gamma, beta):
    mu = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    inv = 1.0 / np.sqrt(var + BN_EPS)
    xhat = (x - mu[None, :, None, None]) * inv[None, :, None, None]
    y = gamma[None, :, None, None] * xhat + beta[None, :, None, None]
    return y, (xhat, inv), mu, var


def bn_train_bwd(dy, gamma, cache):
    xhat, inv = cache
    n = dy.shape[0] * dy.shape[2] * dy.shape[3]
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dbeta = dy.sum(axis=(0, 2, 3))
    dxhat = dy * gamma[None, :, None, None]
    dx = (inv[None, :, None, None] / n) * (
        n * dxhat
        - dxhat.sum(axis=(0, 2, 3))[None, :, None, None]
        - xhat * (dxhat * xhat).sum(axis=(0, 2, 3))[None, :, None, None]
    )
    return dx, dgamma, dbeta


def bn_infer(x, gamma, beta, mean, var):
    s = gamma / np.sqrt(var + BN_EPS)
    return (x - mean[None, :, None, None]) * s[None, :, None, None] + beta[None, :, None, None]


def maxpool_fwd(x):
    b, c, h, w = x.shape
    xr = x.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, h // 2, w // 2, 4)
    idx = xr.argmax(axis=-1)
    out = np.take_along_axis(xr, idx[..., None], axis=-1)[..., 0]
    return out, (idx, x.shape)


def maxpool_bwd(dout, cache):
    idx, (b, c, h, w) = cache
    d = np.zeros((b, c, h // 2, w // 2, 4), dtype=dout.dtype)
    np.put_along_axis(d, idx[..., None], dout[..., None], axis=-1)
    return d.reshape(b, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


# ----------------------------------------------------------------------------- model

PARAM_SHAPES = {
    "conv1.weight": (8, 1, 3, 3), "bn1.weight": (8,), "bn1.bias": (8,),
    "conv2.weight": (8, 8, 3, 3), "bn2.weight": (8,), "bn2.bias": (8,),
    "conv3.weight": (16, 8, 3, 3), "bn3.weight": (16,), "bn3.bias": (16,),
    "fc.weight": (10, 256), "fc.bias": (10,),
}
DECAYED = ("conv1.weight", "conv2.weight", "conv3.weight", "fc.weight")


def init_params(rng: np.random.Generator):
    p = {}
    for name, shape in PARAM_SHAPES.items():
        if name.endswith(".weight") and len(shape) > 1:
            fan_in = int(np.prod(shape[1:]))
            p[name] = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)   # He
        elif name.startswith("bn") and name.endswith(".weight"):
            p[name] = np.ones(shape)
        else:
            p[name] = np.zeros(shape)
    if "fc.weight" in p:
        p["fc.weight"] *= 0.5
    stats = {}
    for i, c in ((1, 8), (2, 8), (3, 16)):
        stats[f"bn{i}.running_mean"] = np.zeros(c)
        stats[f"bn{i}.running_var"] = np.ones(c)
    return p, stats


def forward_train(p, stats, x, y):
    """Loss, gradients, logits for one batch; updates the BN running statistics in place."""
    caches = {}
    batch_stats = {}

    c1, caches["c1"] = conv_fwd(x, p["conv1.weight"])
    b1, caches["b1"], m, v = bn_train_fwd(c1, p["bn1.weight"], p["bn1.bias"])
    batch_stats[1] = (m, v, c1)
    r1 = np.maximum(b1, 0.0)

    c2, caches["c2"] = conv_fwd(r1, p["conv2.weight"])
    b2, caches["b2"], m, v = bn_train_fwd(c2, p["bn2.weight"], p["bn2.bias"])
    batch_stats[2] = (m, v, c2)
    s = b2 + r1
    r2 = np.maximum(s, 0.0)
    pool, caches["pool"] = maxpool_fwd(r2)

    c3, caches["c3"] = conv_fwd(pool, p["conv3.weight"])
    b3, caches["b3"], m, v = bn_train_fwd(c3, p["bn3.weight"], p["bn3.bias"])
    batch_stats[3] = (m, v, c3)
    r3 = np.maximum(b3, 0.0)
    f = r3.reshape(r3.shape[0], -1)
    logits = f @ p["fc.weight"].T + p["fc.bias"]

    # softmax cross-entropy
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    prob = e / e.sum(axis=1, keepdims=True)
    n = x.shape[0]
    loss = -np.log(prob[np.arange(n), y] + 1e-12).mean()

    g = {}
    dlog = prob.copy()
    dlog[np.arange(n), y] -= 1.0
    dlog /= n
    g["fc.weight"] = dlog.T @ f
    g["fc.bias"] = dlog.sum(axis=0)
    df = dlog @ p["fc.weight"]
    db3 = df.reshape(r3.shape) * (b3 > 0)
    dc3, g["bn3.weight"], g["bn3.bias"] = bn_train_bwd(db3, p["bn3.weight"], caches["b3"])
    dpool, g["conv3.weight"] = conv_bwd(dc3, p["conv3.weight"], caches["c3"])
    dr2 = maxpool_bwd(dpool, caches["pool"])
    ds = dr2 * (s > 0)
    dc2, g["bn2.weight"], g["bn2.bias"] = bn_train_bwd(ds, p["bn2.weight"], caches["b2"])
    dr1, g["conv2.weight"] = conv_bwd(dc2, p["conv2.weight"], caches["c2"])
    dr1 = dr1 + ds                                   # residual branch
    db1 = dr1 * (b1 > 0)
    dc1, g["bn1.weight"], g["bn1.bias"] = bn_train_bwd(db1, p["bn1.weight"], caches["b1"])
    _, g["conv1.weight"] = conv_bwd(dc1, p["conv1.weight"], caches["c1"])

    for i, (m, v, pre) in batch_stats.items():
        cnt = pre.shape[0] * pre.shape[2] * pre.shape[3]
        unbiased = v * cnt / (cnt - 1)
        stats[f"bn{i}.running_mean"] = (1 - BN_MOMENTUM) * stats[f"bn{i}.running_mean"] + BN_MOMENTUM * m
        stats[f"bn{i}.running_var"] = (1 - BN_MOMENTUM) * stats[f"bn{i}.running_var"] + BN_MOMENTUM * unbiased
    return loss, g, logits


def forward_infer(w, x):
    """Inference (BatchNorm with running statistics) on exported weights ``w`` (name -> array).

    Computed in float64 from the float32 initializers; this is what the ONNX graph must reproduce.
    """
    x = np.asarray(x, dtype=np.float64)
    w = {k: np.asarray(v, dtype=np.float64) for k, v in w.items()}

    def bn(t, i):
        return bn_infer(t, w[f"bn{i}.weight"], w[f"bn{i}.bias"], w[f"bn{i}.running_mean"], w[f"bn{i}.running_var"])

    r1 = np.maximum(bn(conv_fwd(x, w["conv1.weight"])[0], 1), 0.0)
    r2 = np.maximum(bn(conv_fwd(r1, w["conv2.weight"])[0], 2) + r1, 0.0)
    pool = maxpool_fwd(r2)[0]
    r3 = np.maximum(bn(conv_fwd(pool, w["conv3.weight"])[0], 3), 0.0)
    return r3.reshape(r3.shape[0], -1) @ w["fc.weight"].T + w["fc.bias"]


def shift_augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift every image by a random (dy, dx) in {-1, 0, 1}^2, filling with zeros."""
    b = x.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dy = rng.integers(0, 3, size=b)
    dx = rng.integers(0, 3, size=b)
    out = np.empty_like(x)
    for i in range(b):
        out[i] = xp[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
    return out


def train(x_tr, y_tr, x_te, y_te, *, seed: int, epochs: int, batch: int, lr: float, wd: float, augment: float):
    rng = np.random.default_rng(seed)
    p, stats = init_params(rng)
    mom = {k: np.zeros_like(v) for k, v in p.items()}
    vel = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    x_tr = x_tr.astype(np.float64)
    n = x_tr.shape[0]
    steps_per_epoch = int(np.ceil(n / batch))
    total = epochs * steps_per_epoch
    t = 0
    for ep in range(epochs):
        perm = rng.permutation(n)
        ep_loss, ep_correct = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * batch:(s + 1) * batch]
            if len(idx) < 2:
                continue
            xb = x_tr[idx]
            if augment > 0:
                aug = shift_augment(xb, rng)
                use = rng.random(len(idx)) < augment
                xb = np.where(use[:, None, None, None], aug, xb)
            yb = y_tr[idx]
            loss, g, logits = forward_train(p, stats, xb, yb)
            ep_loss += loss * len(idx)
            ep_correct += int((logits.argmax(1) == yb).sum())
            t += 1
            cur_lr = lr * 0.5 * (1.0 + np.cos(np.pi * (t - 1) / total))
            for k in p:
                gk = g[k] + (wd * p[k] if k in DECAYED else 0.0)
                mom[k] = b1 * mom[k] + (1 - b1) * gk
                vel[k] = b2 * vel[k] + (1 - b2) * gk * gk
                mh = mom[k] / (1 - b1 ** t)
                vh = vel[k] / (1 - b2 ** t)
                p[k] -= cur_lr * mh / (np.sqrt(vh) + eps)
        if ep % 5 == 4 or ep == epochs - 1:
            w = export_weights(p, stats)
            te_acc = float((forward_infer(w, x_te).argmax(1) == y_te).mean())
            print(f"epoch {ep + 1:3d}  loss {ep_loss / n:.4f}  train(batch-stat) acc {ep_correct / n:.4f}  "
                  f"test acc {te_acc:.4f}", flush=True)
    return p, stats


def export_weights(p, stats):
    w = {k: v.astype(np.float32) for k, v in p.items()}
    w.update({k: v.astype(np.float32) for k, v in stats.items()})
    return w


# ----------------------------------------------------------------------------- ONNX

def build_onnx(w):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ascontiguousarray(v, dtype=np.float32), name=k) for k, v in sorted(w.items())]
    N = helper.make_node
    conv_attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])

    def bn(i, x, y):
        return N("BatchNormalization", [x, f"bn{i}.weight", f"bn{i}.bias", f"bn{i}.running_mean", f"bn{i}.running_var"],
                 [y], name=f"bn{i}", epsilon=BN_EPS)

    nodes = [
        N("Conv", ["input", "conv1.weight"], ["conv1_out"], name="conv1", **conv_attrs),
        bn(1, "conv1_out", "bn1_out"),
        N("Relu", ["bn1_out"], ["relu1_out"], name="relu1"),
        N("Conv", ["relu1_out", "conv2.weight"], ["conv2_out"], name="conv2", **conv_attrs),
        bn(2, "conv2_out", "bn2_out"),
        N("Add", ["bn2_out", "relu1_out"], ["add_out"], name="add"),
        N("Relu", ["add_out"], ["relu2_out"], name="relu2"),
        N("MaxPool", ["relu2_out"], ["pool_out"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        N("Conv", ["pool_out", "conv3.weight"], ["conv3_out"], name="conv3", **conv_attrs),
        bn(3, "conv3_out", "bn3_out"),
        N("Relu", ["bn3_out"], ["relu3_out"], name="relu3"),
        N("Flatten", ["relu3_out"], ["flat_out"], name="flatten", axis=1),
        N("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["logits"], name="fc", alpha=1.0, beta=1.0, transB=1),
    ]
    graph = helper.make_graph(
        nodes, "fxpgen_digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
        doc_string="8x8 digits CNN for fxpgen; input x = img/16*255/256 in [0,1); output logits (no softmax)",
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fxpgen scripts/train_digits.py", producer_version="1")
    model.ir_version = IR_VERSION
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def reference_logits(model, x: np.ndarray) -> np.ndarray:
    """Run ``onnx.reference.ReferenceEvaluator`` one image at a time (the graph is batch 1)."""
    from onnx.reference import ReferenceEvaluator

    sess = ReferenceEvaluator(model)
    out = np.empty((x.shape[0], 10), dtype=np.float32)
    for i in range(x.shape[0]):
        out[i] = sess.run(None, {"input": x[i:i + 1].astype(np.float32)})[0][0]
    return out


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--augment", type=float, default=0.5, help="fraction of training images randomly shifted by +-1 px")
    args = ap.parse_args(argv)

    import onnx
    import sklearn

    t0 = time.perf_counter()
    x_tr, x_te, y_tr, y_te = load_split()
    print(f"train {x_tr.shape[0]}  test {x_te.shape[0]}", flush=True)
    p, stats = train(x_tr, y_tr, x_te, y_te, seed=args.seed, epochs=args.epochs, batch=args.batch,
                     lr=args.lr, wd=args.wd, augment=args.augment)
    t_train = time.perf_counter() - t0
    w = export_weights(p, stats)

    model = build_onnx(w)
    np_logits = forward_infer(w, x_te)
    ref_logits = reference_logits(model, x_te)
    max_diff = float(np.abs(np_logits - ref_logits).max())
    np_acc = float((np_logits.argmax(1) == y_te).mean())
    ref_pred = ref_logits.argmax(1)
    n_correct = int((ref_pred == y_te).sum())
    ref_acc = n_correct / len(y_te)
    train_acc = float((forward_infer(w, x_tr).argmax(1) == y_tr).mean())
    print(f"numpy float test acc {np_acc:.4f}  ReferenceEvaluator test acc {ref_acc:.4f}  "
          f"max|numpy - ReferenceEvaluator| {max_diff:.2e}  train acc {train_acc:.4f}", flush=True)
    if max_diff >= 1e-4:
        raise SystemExit(f"ReferenceEvaluator disagrees with the numpy inference: max diff {max_diff:.3e}")

    calib_rng = np.random.default_rng(args.seed + 1)
    calib_idx = np.sort(calib_rng.choice(x_tr.shape[0], size=N_CALIB, replace=False))

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out / "model.onnx"))
    np.save(out / "calib.npy", np.ascontiguousarray(x_tr[calib_idx], dtype=np.float32))
    np.save(out / "test_x.npy", np.ascontiguousarray(x_te, dtype=np.float32))
    np.save(out / "test_y.npy", np.ascontiguousarray(y_te, dtype=np.int64))

    cmd_args = [a for a in (argv if argv is not None else sys.argv[1:])]
    meta = {
        "name": "digits",
        "description": "Small residual CNN for scikit-learn's 8x8 handwritten digits (load_digits), "
                       "float32 ONNX, for fxpgen's fixed-point compiler and demo.",
        "test_accuracy": ref_acc,
        "test_correct": n_correct,
        "test_count": int(len(y_te)),
        "accuracy_measured_with": "onnx.reference.ReferenceEvaluator, batch 1, argmax of logits, test_x.npy/test_y.npy",
        "numpy_float_test_accuracy": np_acc,
        "train_accuracy": train_acc,
        "max_abs_diff_numpy_vs_reference": max_diff,
        "architecture": [
            "input [1,1,8,8]",
            "Conv 3x3 1->8 pad 1 (no bias) + BatchNormalization + Relu -> r1",
            "Conv 3x3 8->8 pad 1 (no bias) + BatchNormalization; Add(r1); Relu",
            "MaxPool 2x2 stride 2 -> [1,8,4,4]",
            "Conv 3x3 8->16 pad 1 (no bias) + BatchNormalization + Relu",
            "Flatten(axis=1) -> [1,256]",
            "Gemm 256->10 (transB=1) -> logits [1,10] (no softmax)",
        ],
        "onnx": {"opset": OPSET, "ir_version": IR_VERSION, "input": "input", "input_shape": [1, 1, 8, 8],
                 "output": "logits", "output_shape": [1, 10],
                 "ops": sorted({n.op_type for n in model.graph.node}),
                 "batchnorm_epsilon": BN_EPS},
        "input_scaling": "x = img / 16 * (255/256) = img * 255 / 4096, img in 0..16 (sklearn load_digits); "
                         "x in [0, 255/256], exact in float32; fits uint8 with fl = 8 without saturation",
        "seed": args.seed,
        "split": "sklearn.model_selection.train_test_split(X, y, test_size=0.2, random_state=0, stratify=y) "
                 "on load_digits() images/target in dataset order",
        "train_count": int(x_tr.shape[0]),
        "calibration": f"calib.npy = {N_CALIB} training images, indices np.sort(np.random.default_rng(seed + 1)"
                       f".choice({x_tr.shape[0]}, {N_CALIB}, replace=False)) into the training split",
        "training": {"epochs": args.epochs, "batch": args.batch, "optimizer": "Adam(0.9, 0.999, 1e-8)",
                     "lr": args.lr, "lr_schedule": "cosine to 0 over all steps", "weight_decay_l2": args.wd,
                     "augmentation": f"random +-1 px shift on a fraction {args.augment} of each batch",
                     "batchnorm": f"training mode (batch statistics); running mean / unbiased var with momentum "
                                  f"{BN_MOMENTUM} exported", "loss": "softmax cross-entropy"},
        "files": {"model": "model.onnx", "calib": "calib.npy float32 (256,1,8,8)",
                  "test_x": f"test_x.npy float32 ({len(y_te)},1,8,8)", "test_y": f"test_y.npy int64 ({len(y_te)},)"},
        "command": " ".join(["python", "scripts/train_digits.py", *cmd_args]),
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
                     "scikit-learn": sklearn.__version__},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"training {t_train:.1f} s, total {time.perf_counter() - t0:.1f} s; wrote {out} ({total / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
