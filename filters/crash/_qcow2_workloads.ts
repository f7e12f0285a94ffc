/**
 * The guest workloads the qcow2 crash exploration (`qcow2.ts`, which
 * re-exports them) records: plain writes, zero-writes and discards, table
 * growth, compressed writes in flight, internal snapshots, persistent bitmaps, a backing file, and
 * encrypted images. 512-byte clusters unless a workload says otherwise.
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import type { BitmapOracleOptions } from "./oracles.ts";
import { type SnapshotContents, snapshotCreateWorkload, snapshotDeleteWorkload, snapshotGotoWorkload } from "./_qcow2_snapshots.ts";

/** A guest workload to explore. */
export interface CrashWorkload {
  /** Name in reports. */
  name: string;
  /** Virtual size in bytes. */
  size: number;
  /** Extra qcow2 creation options (`refcount_bits`, ...); cluster size is 512 unless given. */
  create?: Record<string, string | number | boolean>;
  /** Content of a raw backing file (makes the image an overlay). */
  backing?: Uint8Array;
  /** Prepares the image before the recording starts (adds dirty bitmaps, ...); it is closed afterwards. */
  prepare?(image: BlockNode): Promise<void>;
  /** More qcow2 open options (`bitmap-store`, `encrypt.key-secret` of an encrypted image, ...). */
  open?: Record<string, unknown>;
  /** Secrets the workload's options name (id → passphrase), defined for the process when missing. */
  secrets?: Record<string, string>;
  /** The close of the image is part of the recorded workload (what it writes at close is explored too). */
  closeInLog?: boolean;
  /** What the bitmap oracle expects of the image's dirty bitmaps (see {@linkcode bitmapOracle}). */
  bitmaps?: Pick<BitmapOracleOptions, "covering" | "unchanged" | "neverConsistent">;
  /** Issues the guest requests; a snapshot workload returns what each snapshot must read as. */
  run(guest: BlockNode, rand: () => number): Promise<void | SnapshotContents>;
}

function fill(n: number, byte: number): Uint8Array {
  return new Uint8Array(n).fill(byte);
}

/** The standard workloads (512-byte clusters keep table growth cheap). */
export const QCOW2_WORKLOADS: readonly CrashWorkload[] = [
  {
    name: "random-grow",
    size: 64 * 1024,
    async run(g, rand) {
      for (let i = 0; i < 8; i++) {
        const len = 1 + Math.floor(rand() * 1500);
        const off = Math.floor(rand() * (g.length - len));
        await g.pwrite(off, fill(len, 0x10 + i));
        if (i % 3 === 2) await g.flush();
      }
      await g.flush();
    },
  },
  {
    name: "sequential",
    size: 64 * 1024,
    async run(g) {
      for (let i = 0; i < 8; i++) {
        await g.pwrite(i * 700, fill(700, 0x20 + i));
        if (i % 3 === 2) await g.flush();
      }
      await g.flush();
    },
  },
  {
    name: "overwrite",
    size: 64 * 1024,
    async run(g) {
      await g.pwrite(0, fill(4096, 0x31));
      await g.flush();
      await g.pwrite(300, fill(1000, 0x32));
      await g.pwrite(2048, fill(512, 0x33));
      await g.flush();
      await g.pwrite(0, fill(4096, 0x34));
    },
  },
  {
    name: "zero-discard",
    size: 64 * 1024,
    async run(g) {
      await g.pwrite(0, fill(8192, 0x41));
      await g.flush();
      await g.pwriteZeroes(1024, 1024, { mayUnmap: true });
      await g.pdiscard(4096, 2048);
      await g.pwrite(6144, fill(512, 0x42));
      await g.flush();
      await g.pwriteZeroes(0, 512);
    },
  },
  {
    name: "grow-tables",
    size: 64 * 1024,
    create: { refcount_bits: 64 },
    async run(g) {
      // 512-byte clusters: an L2 table maps 32 KiB, a 64-bit refcount block
      // covers 64 clusters and the one-cluster refcount table 2 MiB of file.
      await g.pwrite(0, fill(1024, 0x51));
      await g.pwrite(40 * 1024, fill(1024, 0x52)); // second L2 table
      await g.flush();
      await g.truncate(4 << 20); // L1 grows
      await g.pwrite(3 << 20, fill(2048, 0x53)); // L2 under the new L1
      await g.flush();
      await g.pwrite(1 << 20, fill(2 << 20, 0x54)); // past 2 MiB of file: the refcount table grows
      await g.flush();
    },
  },
  {
    // convert -c's pattern: many compressed writes in flight (compressed on workers), packed across host clusters.
    name: "compressed-inflight",
    size: 64 * 1024,
    async run(g) {
      const cluster = (c: number) => {
        const d = new Uint8Array(512);
        for (let i = 0; i < d.length; i++) d[i] = i % (3 + 5 * c) === 0 ? (i * 131 + c) & 0xff : 0x61 + c;
        return d;
      };
      const batch = (first: number) =>
        Promise.all(Array.from({ length: 8 }, (_, i) => g.pwrite((first + i) * 512, cluster(first + i), { compressed: true })));
      await batch(0);
      await g.flush();
      await batch(8);
      await g.pwrite(3 * 512, fill(512, 0x71)); // overwrite of a compressed cluster: a normal cluster replaces it
      await g.flush();
    },
  },
  { name: "snapshot-create", size: 64 * 1024, run: snapshotCreateWorkload },
  { name: "snapshot-delete", size: 64 * 1024, run: snapshotDeleteWorkload },
  { name: "snapshot-goto", size: 64 * 1024, run: snapshotGotoWorkload },
  {
    // Bitmaps loaded at open (marked in use before any write), recording
    // writes, zero-writes, discards and a resize, stored at close.
    name: "bitmap-writes",
    size: 64 * 1024,
    async prepare(img) {
      await img.bitmaps.add("b0", { granularity: 1024 });
      await img.bitmaps.add("b1", { granularity: 4096 });
      await img.pwrite(8192, fill(100, 0x71));
      await img.bitmaps.disable("b1");
    },
    bitmaps: { covering: ["b0"], unchanged: ["b1"] },
    closeInLog: true,
    async run(g) {
      await g.pwrite(0, fill(3000, 0x72));
      await g.flush();
      await g.pwriteZeroes(16384, 2048);
      await g.pdiscard(0, 1024);
      await g.pwrite(40000, fill(700, 0x73));
      await g.flush();
      await g.truncate(96 * 1024);
      await g.pwrite(90 * 1024, fill(512, 0x74));
      await g.flush();
    },
  },
  {
    // Removal rewrites the directory at once; a bitmap added while open is stored at close.
    name: "bitmap-add-remove",
    size: 64 * 1024,
    async prepare(img) {
      await img.bitmaps.add("b0", { granularity: 512 });
      await img.bitmaps.add("gone", { granularity: 2048 });
    },
    bitmaps: { covering: ["b0"], neverConsistent: ["gone"] },
    closeInLog: true,
    async run(g) {
      await g.pwrite(1000, fill(2000, 0x81));
      await g.flush();
      await g.bitmaps.remove("gone");
      await g.bitmaps.add("new", { granularity: 4096 });
      await g.pwrite(30000, fill(5000, 0x82));
      await g.flush();
    },
  },
  {
    // bitmap-store=flush: stored at every flush, marked in use again before the next change.
    name: "bitmap-store-flush",
    size: 64 * 1024,
    open: { "bitmap-store": "flush" },
    async prepare(img) {
      await img.pwrite(8192, fill(4096, 0x90)); // allocated, and clean in b0
      await img.bitmaps.add("b0", { granularity: 1024 });
    },
    bitmaps: { covering: ["b0"] },
    closeInLog: true,
    async run(g) {
      await g.pwrite(0, fill(1500, 0x91));
      await g.flush();
      await g.pwrite(20000, fill(3000, 0x92));
      await g.pwriteZeroes(0, 512);
      await g.flush();
      await g.flush();
      // A write arriving while the flush stores the bitmaps waits for the store and the in-use marking.
      await Promise.all([g.flush(), g.pwrite(40000, fill(2000, 0x94)), g.pwrite(9000, fill(100, 0x95))]);
      await g.truncate(80 * 1024);
      await g.pwrite(70000, fill(600, 0x93));
      await g.flush();
    },
  },
  {
    name: "backing",
    size: 64 * 1024,
    backing: fill(64 * 1024, 0x61),
    async run(g) {
      await g.pwrite(100, fill(300, 0x62)); // COW from the backing file
      await g.pwrite(5000, fill(2000, 0x63));
      await g.flush();
      await g.pwrite(600, fill(100, 0x64));
      await g.pwriteZeroes(8192, 1024);
      await g.flush();
    },
  },
];

/** Encrypted images (LUKS in qcow2 clusters, legacy AES): the same crash safety, with the data encrypted on the way. */
export const QCOW2_ENCRYPTED_WORKLOADS: readonly CrashWorkload[] = [
  {
    name: "encrypted-luks",
    size: 64 * 1024,
    // 4 KiB clusters: sector-sized writes leave copy-on-write regions, which must be encrypted too.
    create: {
      cluster_size: 4096,
      "encrypt.format": "luks",
      "encrypt.key-secret": "x-crash-qcow2-key",
      "encrypt.iter-time": 1,
      "encrypt.cipher-alg": "aes-128",
    },
    open: { "encrypt.key-secret": "x-crash-qcow2-key" },
    secrets: { "x-crash-qcow2-key": "crash-passphrase" },
    async run(g) {
      await g.pwrite(0, fill(1500, 0x71)); // partial clusters: encrypted copy-on-write of zeros
      await g.pwrite(5000, fill(700, 0x72));
      await g.flush();
      await g.pwrite(512, fill(1024, 0x73)); // in place
      await g.pwrite(20000, fill(2048, 0x74));
      await g.flush();
      await g.pwriteZeroes(0, 1024);
    },
  },
  {
    name: "encrypted-aes",
    size: 64 * 1024,
    create: { cluster_size: 4096, "encrypt.format": "aes", "encrypt.key-secret": "x-crash-qcow2-key" },
    open: { "encrypt.key-secret": "x-crash-qcow2-key" },
    secrets: { "x-crash-qcow2-key": "crash-passphrase" },
    async run(g, rand) {
      for (let i = 0; i < 6; i++) {
        const len = 1 + Math.floor(rand() * 1500);
        const off = Math.floor(rand() * (g.length - len));
        await g.pwrite(off, fill(len, 0x80 + i));
        if (i % 2 === 1) await g.flush();
      }
    },
  },
];
