#!/usr/bin/env python3
"""Mutate a VM-like image in place, the way a running guest dirties memory between snapshots.

usage: mutate.py IMAGE SEED [PERCENT [WORKING_SET]]
       (PERCENT of the 4 KiB pages, default 2; WORKING_SET a percent of the pages, default 100)

Pages are chosen uniformly at random without replacement, from a working set: WORKING_SET
percent of the pages, the same set for every SEED (chosen with a fixed seed), as a guest keeps
rewriting the same memory. Of the chosen pages about half get a
small change (8 to 256 random bytes at a random offset), a quarter are rewritten with new
random bytes, and a quarter get new low-entropy text content. The same IMAGE contents, SEED and
PERCENT always give the same result. The file is edited through mmap; its size does not change.
"""
import mmap
import random
import sys

PAGE = 4096


def text_page(rng):
    """A low-entropy page: a few short log-like lines, repeated."""
    lines = []
    for _ in range(rng.randrange(1, 5)):
        words = rng.choices(
            [b"kernel", b"task", b"pid", b"run", b"sleep", b"irq", b"dma", b"page", b"fault", b"ok"],
            k=rng.randrange(3, 7),
        )
        line = b" ".join(words) + b" %d=%08x" % (rng.randrange(1 << 16), rng.getrandbits(32))
        lines.append(line.ljust(64, b" ")[:63] + b"\n")
    block = b"".join(lines)
    return (block * (PAGE // len(block) + 1))[:PAGE]


def main():
    if len(sys.argv) not in (3, 4, 5):
        sys.exit(__doc__.strip())
    path, seed = sys.argv[1], int(sys.argv[2])
    percent = float(sys.argv[3]) if len(sys.argv) >= 4 else 2.0
    working_set = float(sys.argv[4]) if len(sys.argv) == 5 else 100.0
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        size = f.seek(0, 2)
        pages = size // PAGE
        if pages == 0:
            sys.exit(f"{path}: smaller than one page")
        if working_set >= 100:
            candidates = range(pages)
        else:
            size_ws = max(1, round(pages * working_set / 100))
            candidates = random.Random(0x5E7).sample(range(pages), size_ws)
        count = min(len(candidates), max(1, round(pages * percent / 100)))
        chosen = sorted(rng.sample(candidates, count))
        kinds = {"small": 0, "random": 0, "text": 0}
        with mmap.mmap(f.fileno(), pages * PAGE) as m:
            for p in chosen:
                base = p * PAGE
                r = rng.random()
                if r < 0.5:
                    n = rng.randint(8, 256)
                    off = base + rng.randrange(PAGE - n + 1)
                    new = rng.randbytes(n)
                    # Make sure the page really changes (a zero run over zeros would not).
                    if m[off:off + n] == new:
                        new = bytes(b ^ 0xFF for b in new)
                    m[off:off + n] = new
                    kinds["small"] += 1
                elif r < 0.75:
                    m[base:base + PAGE] = rng.randbytes(PAGE)
                    kinds["random"] += 1
                else:
                    m[base:base + PAGE] = text_page(rng)
                    kinds["text"] += 1
    print(f"mutated {count} of {pages} pages: {kinds['small']} small, "
          f"{kinds['random']} random, {kinds['text']} text", file=sys.stderr)


if __name__ == "__main__":
    main()
