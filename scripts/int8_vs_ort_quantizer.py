#!/usr/bin/env python3
"""kiln's int8 export against ONNX Runtime's own quantizer, side by side in one run, on the same fp32 model.

    kiln export onnx --run RUN --int8 static --dynamic-batch          # writes best.onnx, best-int8.onnx
    python3 scripts/int8_vs_ort_quantizer.py RUN/weights IMAGES_DIR [--calib N] [--eval N] [--rounds R]

IMAGES_DIR is an ImageFolder split (<class>/<image>.png, e.g. Fashion-MNIST's test folder written by
scripts/fashion_mnist_folder.py; 8-bit grayscale or RGB PNGs without interlacing, decoded here with zlib only).
The script
  1. quantizes best.onnx with ONNX Runtime's tool as its documentation recommends for CPUs
     (quant_pre_process, then quantize_static: QDQ, per-channel, uint8 activations / int8 weights, MinMax) on the
     first --calib images (spread over the classes), preprocessed as kiln's metadata says (stretch resize,
     bilinear; /255, mean, std);
  2. times fp32, kiln's int8 and ONNX Runtime's int8 with onnxruntime at one thread, batch 1 and 8 (when the batch
     is dynamic), interleaving the models round by round and reporting medians;
  3. scores top-1 accuracy of all three on --eval images of IMAGES_DIR, and their agreement with fp32.
Needs: onnxruntime (the wheel scripts/deps.sh installs), onnx, numpy.
"""
import argparse
import json
import os
import statistics
import struct
import time
import zlib

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process


def read_png(path):
    """8-bit grayscale/RGB/RGBA PNG (no interlace) -> HxWx3 uint8."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat, width = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0, f"{path}: only 8-bit, non-interlaced PNGs"
            channels = {0: 1, 2: 3, 6: 4}[color]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * channels
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        if f == 0:
            out[y] = line
            prev = line
            continue
        cur = np.zeros(stride, np.int32)
        for x in range(stride):
            a = cur[x - channels] if x >= channels else 0
            b = prev[x]
            c = prev[x - channels] if x >= channels else 0
            if f == 0:
                v = line[x]
            elif f == 1:
                v = line[x] + a
            elif f == 2:
                v = line[x] + b
            elif f == 3:
                v = line[x] + (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                v = line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)
            cur[x] = v & 0xFF
        out[y] = cur
        prev = cur
    img = out.reshape(height, width, channels)
    if channels == 1:
        img = np.repeat(img, 3, axis=2)
    return img[:, :, :3]


def resize_bilinear(img, h, w):
    ih, iw = img.shape[:2]
    ys = (np.arange(h) + 0.5) * ih / h - 0.5
    xs = (np.arange(w) + 0.5) * iw / w - 0.5
    y0 = np.clip(np.floor(ys).astype(int), 0, ih - 1)
    x0 = np.clip(np.floor(xs).astype(int), 0, iw - 1)
    y1, x1 = np.clip(y0 + 1, 0, ih - 1), np.clip(x0 + 1, 0, iw - 1)
    wy = np.clip(ys - y0, 0, 1)[:, None, None]
    wx = np.clip(xs - x0, 0, 1)[None, :, None]
    f = img.astype(np.float32)
    top = f[y0][:, x0] * (1 - wx) + f[y0][:, x1] * wx
    bottom = f[y1][:, x0] * (1 - wx) + f[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def preprocess(path, meta):
    h, w = meta["input"]["size"]
    x = resize_bilinear(read_png(path), h, w) / 255.0
    x = (x - np.array(meta["input"]["mean"], np.float32)) / np.array(meta["input"]["std"], np.float32)
    return x.transpose(2, 0, 1).astype(np.float32)


def images(root, classes, limit):
    per_class = [sorted(os.listdir(os.path.join(root, c))) for c in classes]
    out, i = [], 0
    while len(out) < limit and any(i < len(p) for p in per_class):
        for label, names in enumerate(per_class):
            if i < len(names) and len(out) < limit:
                out.append((os.path.join(root, classes[label], names[i]), label))
        i += 1
    return out


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights", help="folder with best.onnx and best-int8.onnx from kiln export onnx --int8")
    ap.add_argument("images", help="ImageFolder split to calibrate ORT's quantizer on and to score")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=10, help="timed runs per model per round")
    ap.add_argument("--json")
    args = ap.parse_args()
    fp32 = os.path.join(args.weights, "best.onnx")
    kiln8 = os.path.join(args.weights, "best-int8.onnx")
    ortq = os.path.join(args.weights, "best-ort-int8.onnx")
    model = onnx.load(fp32)
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == "kiln"))
    classes = meta["class_names"]
    calib = images(args.images, classes, args.calib)
    name = model.graph.input[0].name
    dynamic = meta["input"]["shape"][0] is None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {name: preprocess(item[0], meta)[None]}

    pre = ortq + ".pre.onnx"
    quant_pre_process(fp32, pre, skip_symbolic_shape=True)
    quantize_static(pre, ortq, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    os.remove(pre)
    models = {"fp32": fp32, "kiln int8": kiln8, "onnxruntime int8": ortq}
    sessions = {k: session(v) for k, v in models.items()}

    evaluated = images(args.images, classes, args.eval)
    tensors = np.stack([preprocess(p, meta) for p, _ in evaluated])
    labels = np.array([l for _, l in evaluated])
    top1 = {}
    for k, s in sessions.items():
        if dynamic:
            logits = np.concatenate([s.run(None, {name: tensors[i:i + 64]})[0] for i in range(0, len(tensors), 64)])
        else:
            logits = np.concatenate([s.run(None, {name: t[None]})[0] for t in tensors])
        top1[k] = logits.argmax(1)
    rows = []
    batches = [1, 8] if dynamic else [1]
    times = {(k, b): [] for k in models for b in batches}
    for _ in range(args.rounds):
        for b in batches:
            x = np.repeat(tensors[:1], b, axis=0)
            for k, s in sessions.items():
                s.run(None, {name: x})
                for _ in range(args.runs):
                    t = time.perf_counter()
                    s.run(None, {name: x})
                    times[(k, b)].append((time.perf_counter() - t) * 1e3)
    for k in models:
        row = {
            "model": k,
            "bytes": os.path.getsize(models[k]),
            "top1": float((top1[k] == labels).mean()),
            "agreement_with_fp32": float((top1[k] == top1["fp32"]).mean()),
        }
        for b in batches:
            row[f"ms_b{b}"] = statistics.median(times[(k, b)])
        rows.append(row)
    print(f"onnxruntime {ort.__version__}, one thread, {len(evaluated)} images of {args.images}, "
          f"{args.rounds} rounds x {args.runs} runs, medians")
    head = f"{'model':<18} {'MB':>7} {'top-1':>7} {'agree':>7}" + "".join(f" {'b' + str(b) + ' ms':>9} {'x fp32':>7}" for b in batches)
    print(head)
    for r in rows:
        line = f"{r['model']:<18} {r['bytes'] / 1e6:>7.2f} {r['top1']:>7.4f} {r['agreement_with_fp32']:>7.4f}"
        for b in batches:
            line += f" {r[f'ms_b{b}']:>9.2f} {rows[0][f'ms_b{b}'] / r[f'ms_b{b}']:>7.2f}"
        print(line)
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=2)


if __name__ == "__main__":
    main()
