#!/usr/bin/env python3
"""Write a VM-like image: zero, random and low-entropy (text-like) 4 KiB pages, mixed.

usage: mkimage.py OUT SIZE_MIB [SEED]
"""
import os
import random
import sys

out, mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
pages = mib * 256
text = [(b"kernel %05d task running pid=%d " % (i, i * 7)).ljust(64, b".") * 64 for i in range(512)]
with open(out + ".tmp", "wb") as f:
    batch = []
    for i in range(pages):
        r = rng.random()
        if r < 0.40:
            batch.append(bytes(4096))
        elif r < 0.70:
            batch.append(os.urandom(4096))
        else:
            batch.append(text[rng.randrange(len(text))])
        if len(batch) == 1024:
            f.write(b"".join(batch))
            batch.clear()
    f.write(b"".join(batch))
os.replace(out + ".tmp", out)
