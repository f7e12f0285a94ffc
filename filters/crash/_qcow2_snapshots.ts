/**
 * Crash exploration of qcow2 internal snapshots: workloads that create,
 * apply and delete snapshots between writes to shared clusters, and an
 * oracle that every snapshot a crash state lists reads exactly as the disk
 * did when the snapshot was taken (the snapshot table, its L1 copy and what
 * they point at are durable together). Private to `qcow2.ts`.
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import type { SnapshotInfo } from "../../core/types.ts";
import type { CrashOracle, FormatSpec } from "./oracles.ts";
import { openState } from "./oracles.ts";

/** What each snapshot of a workload must read as (by name). */
export type SnapshotContents = Record<string, Uint8Array>;

function info(name: string): SnapshotInfo {
  return { id: "", name, vmStateSize: 0, dateSec: 1_700_000_000, dateNsec: 0, vmClockNsec: 0, icount: 0 };
}

async function whole(g: BlockNode): Promise<Uint8Array> {
  const out = new Uint8Array(g.length);
  await g.pread(0, out);
  return out;
}

function fill(n: number, byte: number): Uint8Array {
  return new Uint8Array(n).fill(byte);
}

/** Takes snapshot `name` and remembers what it must read as. */
async function take(g: BlockNode, name: string, into: SnapshotContents): Promise<void> {
  into[name] = await whole(g);
  await g.snapshots.create(info(name));
}

/** Creating snapshots between writes: the second write of a cluster copies it (and its L2 table). */
export async function snapshotCreateWorkload(g: BlockNode): Promise<SnapshotContents> {
  const snaps: SnapshotContents = {};
  await g.pwrite(0, fill(4096, 0x71));
  await g.pwrite(40 * 1024, fill(1024, 0x72));
  await g.flush();
  await take(g, "s1", snaps);
  await g.pwrite(512, fill(1024, 0x73)); // shared cluster and table: copied
  await g.flush();
  await take(g, "s2", snaps);
  await g.pwrite(2048, fill(512, 0x74));
  await g.flush();
  return snaps;
}

/** Deleting snapshots: the clusters only they held are freed, the active layer's become COPIED again. */
export async function snapshotDeleteWorkload(g: BlockNode): Promise<SnapshotContents> {
  const snaps: SnapshotContents = {};
  await g.pwrite(0, fill(8192, 0x81));
  await g.flush();
  await take(g, "a", snaps);
  await g.pwrite(1024, fill(2048, 0x82));
  await take(g, "b", snaps);
  await g.flush();
  await g.snapshots.delete("a");
  await g.pwrite(4096, fill(512, 0x83));
  await g.flush();
  await g.snapshots.delete("b");
  await g.pwrite(0, fill(512, 0x84)); // COPIED again: in place
  await g.flush();
  return snaps;
}

/**
 * Applying snapshots. A revert changes what the guest reads without a guest
 * request the durability oracle could see, so each revert goes to a
 * snapshot of the current content: the tables still switch, the old active
 * layer's references are dropped and the flags recomputed.
 */
export async function snapshotGotoWorkload(g: BlockNode): Promise<SnapshotContents> {
  const snaps: SnapshotContents = {};
  await g.pwrite(0, fill(4096, 0x91));
  await g.flush();
  await take(g, "s1", snaps);
  await g.pwrite(1024, fill(1024, 0x92));
  await take(g, "s2", snaps);
  await g.snapshots.goto("s2");
  await g.flush();
  await g.pwrite(2048, fill(1024, 0x93));
  await g.flush();
  await take(g, "s3", snaps);
  await g.snapshots.goto("s3");
  await g.snapshots.delete("s2");
  await g.flush();
  return snaps;
}

/** Every snapshot a crash state lists reads as the disk did when it was taken. */
export function snapshotOracle(format: FormatSpec, expected: SnapshotContents): CrashOracle {
  return {
    name: "snapshots",
    async check(bytes) {
      let names: string[];
      {
        const { node } = await openState(bytes, format, true);
        try {
          names = (await node.snapshots.list()).map((s) => s.name);
        } catch (e) {
          return `cannot list the snapshots: ${(e as Error).message}`;
        } finally {
          await node.close();
        }
      }
      for (const name of names) {
        const want = expected[name];
        if (!want) return `unexpected snapshot '${name}'`;
        const { node } = await openState(bytes, { ...format, options: { ...format.options, snapshot: { name } } }, true);
        try {
          const got = new Uint8Array(want.length);
          await node.pread(0, got);
          const at = got.findIndex((v, i) => v !== want[i]);
          if (at >= 0) return `snapshot '${name}' byte ${at} is 0x${got[at].toString(16)}, expected 0x${want[at].toString(16)}`;
        } catch (e) {
          return `cannot read snapshot '${name}': ${(e as Error).message}`;
        } finally {
          await node.close();
        }
      }
      return undefined;
    },
  };
}
