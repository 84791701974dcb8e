"""Inflate speed of 128 KiB gzip (level 9, mksquashfs's) blocks of JPEG bytes: the stdlib's
zlib against zlib-ng's binding and python-isal's, one thread. Needs numpy, pillow, zlib-ng,
isal (`pip install zlib-ng isal`)."""

import io
import time
import zlib

import numpy as np
from isal import isal_zlib
from PIL import Image
from zlib_ng import zlib_ng

rng = np.random.default_rng(0)
data = b""
while len(data) < 4 << 20:  # noisy photographs' worth of JPEG bytes (gzip saves ~0.5%)
    base = Image.fromarray(rng.integers(0, 255, (8, 8, 3)).astype(np.uint8))
    pixels = np.asarray(base.resize((500, 375), Image.BICUBIC)).astype(np.int16)
    pixels += rng.integers(-20, 20, pixels.shape).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    data += out.getvalue()
blocks = [zlib.compress(data[i : i + 131072], 9) for i in range(0, len(data) - 131072, 131072)]
print(f"{len(blocks)} blocks, compressed to {sum(map(len, blocks)) / len(blocks) / 131072:.3f}")
for _ in range(2):
    for module in (zlib, zlib_ng, isal_zlib):
        start = time.perf_counter()
        for _ in range(5):
            for block in blocks:
                inflater = module.decompressobj()
                assert len(inflater.decompress(block, 131073)) == 131072 and inflater.eof
        took = time.perf_counter() - start
        print(f"{module.__name__:16} {len(blocks) * 5 * 131072 / took / 1e6:5.0f} MB/s")
