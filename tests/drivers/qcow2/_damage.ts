/**
 * Seeded random damage to a qcow2 image's metadata (refcounts, refcount
 * table entries, L1 and L2 entries), shared by the check differential test
 * and tests/testdata/make.sh, which records what qemu-img check says about
 * each damaged image so the test can compare offline too.
 *
 * @module
 */

/** A small deterministic PRNG (LCG), so failures reproduce. */
export function prng(seed: number): (n: number) => number {
  let x = seed;
  return (n) => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x % n;
  };
}

/** Damages 1 to 3 metadata fields of the image in `bytes`, chosen by `seed`. */
export function damage(bytes: Uint8Array, seed: number): void {
  const rnd = prng(seed);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const cs = 2 ** v.getUint32(20);
  const order = v.getUint32(4) === 3 ? v.getUint32(96) : 4;
  const reftable = Number(v.getBigUint64(48));
  const block = Number(v.getBigUint64(reftable));
  const l1 = Number(v.getBigUint64(40));
  const clusters = Math.ceil(bytes.length / cs);
  for (let n = 1 + rnd(3); n > 0; n--) {
    const kind = rnd(5);
    if (kind <= 1) {
      // A refcount off by one or zeroed.
      const c = rnd(clusters + 2);
      const bits = 2 ** order;
      const value = rnd(3);
      if (bits >= 8) {
        const at = block + (c * bits) / 8;
        bytes.fill(0, at, at + bits / 8);
        bytes[at + bits / 8 - 1] = value;
      } else {
        const per = 8 / bits;
        const at = block + Math.floor(c / per);
        const shift = (c % per) * bits;
        const mask = (1 << bits) - 1;
        bytes[at] = (bytes[at] & ~(mask << shift)) | ((value & mask) << shift);
      }
    } else if (kind === 2) {
      const choices = [0n, BigInt(block + 512), BigInt(clusters * cs * 4), BigInt(block) | 1n];
      v.setBigUint64(reftable + rnd(2) * 8, choices[rnd(choices.length)]);
    } else if (kind === 3) {
      const l2 = Number(v.getBigUint64(l1) & 0x00fffffffffffe00n);
      if (!l2) continue;
      const off = BigInt(rnd(clusters + 3) * cs);
      const choices = [(1n << 63n) | off, off, off | 1n, (1n << 63n) | (off + 512n), (1n << 62n) | off, 0n, (1n << 63n) | off | 2n];
      v.setBigUint64(l2 + rnd(32) * (v.getUint32(4) === 3 && bytes[72 + 7] & 16 ? 16 : 8), choices[rnd(choices.length)]);
    } else {
      const off = BigInt(rnd(clusters + 3) * cs);
      const choices = [off | (1n << 63n), off, off + 512n, off | 1n];
      v.setBigUint64(l1, choices[rnd(choices.length)]);
    }
  }
}
