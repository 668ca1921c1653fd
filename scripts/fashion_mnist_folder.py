#!/usr/bin/env python3
"""Writes Fashion-MNIST (Debian's dataset-fashion-mnist IDX files) as an ImageFolder of PNGs:
OUT/{train,test}/<class>/<index>.png, 28x28 grayscale, the class names as Zalando names them.

    apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb x
    scripts/fashion_mnist_folder.py x/usr/share/datasets/fashion-mnist OUT [--limit N]

Only the standard library is used (PNG written with zlib). Used by scripts/compare_train_speed.py and the
benchmark tables in the README; no test depends on it.
"""
import argparse
import gzip
import os
import struct
import zlib

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    dims = magic & 0xFF
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return shape, data[4 + 4 * dims:]


def png_gray(width, height, pixels):
    raw = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz")
    ap.add_argument("out")
    ap.add_argument("--limit", type=int, default=0, help="at most N images per split (0: all)")
    args = ap.parse_args()
    for split, prefix in [("train", "train"), ("test", "t10k")]:
        (n, h, w), images = read_idx(os.path.join(args.src, f"{prefix}-images-idx3-ubyte.gz"))
        (_,), labels = read_idx(os.path.join(args.src, f"{prefix}-labels-idx1-ubyte.gz"))
        n = min(n, args.limit) if args.limit else n
        for c in CLASSES:
            os.makedirs(os.path.join(args.out, split, c), exist_ok=True)
        for i in range(n):
            path = os.path.join(args.out, split, CLASSES[labels[i]], f"{i:05d}.png")
            with open(path, "wb") as f:
                f.write(png_gray(w, h, images[i * h * w:(i + 1) * h * w]))
        print(f"{split}: {n} images -> {os.path.join(args.out, split)}")


if __name__ == "__main__":
    main()
