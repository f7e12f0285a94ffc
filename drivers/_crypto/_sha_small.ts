/**
 * SHA-256 and SHA-1 of inputs that fit one block (at most 55 bytes), in
 * plain JavaScript. The AF splitter hashes 4000 such inputs per key slot
 * unlock; a `node:crypto` hash object costs about 8 µs each, this well under
 * one. Longer inputs and other hashes use `node:crypto`. The message
 * schedule is zeroed after each hash (the inputs are key material).
 *
 * @module
 */

const K256 = new Uint32Array([
  0x428a2f98,
  0x71374491,
  0xb5c0fbcf,
  0xe9b5dba5,
  0x3956c25b,
  0x59f111f1,
  0x923f82a4,
  0xab1c5ed5,
  0xd807aa98,
  0x12835b01,
  0x243185be,
  0x550c7dc3,
  0x72be5d74,
  0x80deb1fe,
  0x9bdc06a7,
  0xc19bf174,
  0xe49b69c1,
  0xefbe4786,
  0x0fc19dc6,
  0x240ca1cc,
  0x2de92c6f,
  0x4a7484aa,
  0x5cb0a9dc,
  0x76f988da,
  0x983e5152,
  0xa831c66d,
  0xb00327c8,
  0xbf597fc7,
  0xc6e00bf3,
  0xd5a79147,
  0x06ca6351,
  0x14292967,
  0x27b70a85,
  0x2e1b2138,
  0x4d2c6dfc,
  0x53380d13,
  0x650a7354,
  0x766a0abb,
  0x81c2c92e,
  0x92722c85,
  0xa2bfe8a1,
  0xa81a664b,
  0xc24b8b70,
  0xc76c51a3,
  0xd192e819,
  0xd6990624,
  0xf40e3585,
  0x106aa070,
  0x19a4c116,
  0x1e376c08,
  0x2748774c,
  0x34b0bcb5,
  0x391c0cb3,
  0x4ed8aa4a,
  0x5b9cca4f,
  0x682e6ff3,
  0x748f82ee,
  0x78a5636f,
  0x84c87814,
  0x8cc70208,
  0x90befffa,
  0xa4506ceb,
  0xbef9a3f7,
  0xc67178f2,
]);

/** Largest input the one-block functions take. */
export const SMALL_MAX = 55;

const w = new Uint32Array(80);

/** Loads `data` into `w[0..15]` as one padded big-endian block. */
function loadBlock(data: Uint8Array): void {
  w.fill(0, 0, 16);
  for (let i = 0; i < data.length; i++) w[i >> 2] |= data[i] << (24 - 8 * (i & 3));
  w[data.length >> 2] |= 0x80 << (24 - 8 * (data.length & 3));
  w[15] = data.length * 8;
}

function store(out: Uint8Array, words: number[]): Uint8Array {
  for (let i = 0; i < words.length; i++) {
    const v = words[i];
    out[i * 4] = v >>> 24;
    out[i * 4 + 1] = v >>> 16;
    out[i * 4 + 2] = v >>> 8;
    out[i * 4 + 3] = v;
  }
  return out;
}

/** SHA-256 of `data` (at most {@linkcode SMALL_MAX} bytes). */
export function sha256Small(data: Uint8Array): Uint8Array {
  loadBlock(data);
  for (let i = 16; i < 64; i++) {
    const a = w[i - 15];
    const b = w[i - 2];
    const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
    const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  let a = 0x6a09e667, b = 0xbb67ae85, c = 0x3c6ef372, d = 0xa54ff53a;
  let e = 0x510e527f, f = 0x9b05688c, g = 0x1f83d9ab, h = 0x5be0cd19;
  for (let i = 0; i < 64; i++) {
    const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K256[i] + w[i]) | 0;
    const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
    h = g;
    g = f;
    f = e;
    e = (d + t1) | 0;
    d = c;
    c = b;
    b = a;
    a = (t1 + t2) | 0;
  }
  w.fill(0);
  return store(new Uint8Array(32), [
    (a + 0x6a09e667) | 0,
    (b + 0xbb67ae85) | 0,
    (c + 0x3c6ef372) | 0,
    (d + 0xa54ff53a) | 0,
    (e + 0x510e527f) | 0,
    (f + 0x9b05688c) | 0,
    (g + 0x1f83d9ab) | 0,
    (h + 0x5be0cd19) | 0,
  ]);
}

/** SHA-1 of `data` (at most {@linkcode SMALL_MAX} bytes). */
export function sha1Small(data: Uint8Array): Uint8Array {
  loadBlock(data);
  for (let i = 16; i < 80; i++) {
    const x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16];
    w[i] = (x << 1) | (x >>> 31);
  }
  let a = 0x67452301, b = 0xefcdab89, c = 0x98badcfe, d = 0x10325476, e = 0xc3d2e1f0;
  for (let i = 0; i < 80; i++) {
    let f: number, k: number;
    if (i < 20) {
      f = (b & c) | (~b & d);
      k = 0x5a827999;
    } else if (i < 40) {
      f = b ^ c ^ d;
      k = 0x6ed9eba1;
    } else if (i < 60) {
      f = (b & c) | (b & d) | (c & d);
      k = 0x8f1bbcdc;
    } else {
      f = b ^ c ^ d;
      k = 0xca62c1d6;
    }
    const t = (((a << 5) | (a >>> 27)) + f + e + k + w[i]) | 0;
    e = d;
    d = c;
    c = (b << 30) | (b >>> 2);
    b = a;
    a = t;
  }
  w.fill(0);
  return store(new Uint8Array(20), [
    (a + 0x67452301) | 0,
    (b + 0xefcdab89) | 0,
    (c + 0x98badcfe) | 0,
    (d + 0x10325476) | 0,
    (e + 0xc3d2e1f0) | 0,
  ]);
}
