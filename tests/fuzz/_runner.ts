/**
 * blkgraph's side of a fuzz case, as the child process (`_child.ts`) runs
 * it; the parent gives every case a time and memory budget and kills the
 * child when it is exceeded, so a hang or an out-of-memory is a finding,
 * not a dead fuzzer.
 *
 * blkgraph's side of a case: open the mutated image read-only and read a
 * window of it (compared with QEMU's conversion when QEMU accepted the
 * image); open a copy read-write, write patterns and read each back, flush,
 * close, reopen and read them back again; check a copy, and repair another
 * with `check -r all`.
 *
 * Run in the child process (`_child.ts`); not a test on its own.
 *
 * @module
 */

import { BlockError, type BlockNode, defineObject, hasSecret, open } from "../../mod.ts";
import { FUZZ_SECRET } from "./_seeds.ts";

/** One write of a case. */
export interface CaseWrite {
  /** Guest offset. */
  off: number;
  /** Length in bytes. */
  len: number;
  /** Pattern byte. */
  byte: number;
}

/** What the parent asks for one case. */
export interface CaseRequest {
  /** Case number. */
  id: number;
  /** Image to open read-only and read. */
  ro: string;
  /** Bytes to read from offset 0 (the comparison window). */
  window: number;
  /** QEMU's reading of the window (a raw file), when QEMU accepted the image. */
  qemuRaw?: string;
  /** Image copy to write. */
  rw?: string;
  /** The writes. */
  writes: CaseWrite[];
  /** Image copy to check read-only. */
  check?: string;
  /** Image copy to repair (`check -r all`). */
  repair?: string;
  /** The image is encrypted: opens pass `encrypt.key-secret` (the secret {@linkcode FUZZ_SECRET}). */
  encrypted?: boolean;
}

/** How one step ended. */
export interface Outcome {
  /** Finished without an error. */
  ok: boolean;
  /** The error: class name, errno code for a BlockError, message. */
  error?: { name: string; code?: string; message: string; stack?: string };
}

/** What blkgraph did with one case. */
export interface CaseReply {
  /** Case number. */
  id: number;
  /** Read-only open. */
  open: Outcome;
  /** Virtual size blkgraph reports. */
  size?: number;
  /** Reading the window. */
  read?: Outcome;
  /** First byte where blkgraph's read differs from QEMU's (-1: identical; undefined: not compared). */
  diffAt?: number;
  /** Read-write open. */
  rwOpen?: Outcome;
  /** Each write. */
  writes?: Outcome[];
  /** The writes done (those inside the image's length). */
  writesUsed?: CaseWrite[];
  /** A write that reported success read back wrong (first differing guest offset), in the same open. */
  readbackWrong?: number;
  /** Flush and close after the writes. */
  close?: Outcome;
  /** After reopening: a successful write reads back wrong at this offset. */
  reopenWrong?: number;
  /** The reopen itself. */
  reopen?: Outcome;
  /** check (read-only). */
  check?: Outcome & { corruptions?: number; leaks?: number; checkErrors?: number };
  /** check -r all. */
  repair?: Outcome & { corruptions?: number; leaks?: number; checkErrors?: number; fixed?: number };
  /** Peak resident set size seen by this process, bytes. */
  rss: number;
}

function outcome(e: unknown): Outcome {
  if (e instanceof BlockError) return { ok: false, error: { name: e.name, code: e.code, message: e.message } };
  const err = e instanceof Error ? e : new Error(String(e));
  return { ok: false, error: { name: err.name, message: err.message, stack: err.stack?.split("\n").slice(0, 6).join("\n") } };
}

function spec(path: string, encrypted: boolean | undefined): Record<string, unknown> {
  const key = encrypted ? { "encrypt.key-secret": FUZZ_SECRET.id } : {};
  return { driver: "qcow2", ...key, file: { driver: "file", filename: path, locking: "off" } };
}

async function openImage(path: string, readOnly: boolean, encrypted: boolean | undefined): Promise<BlockNode> {
  return await open(spec(path, encrypted), { readOnly, forceShare: readOnly });
}

async function readOnlyPart(req: CaseRequest, rep: CaseReply): Promise<void> {
  let node: BlockNode;
  try {
    node = await openImage(req.ro, true, req.encrypted);
  } catch (e) {
    rep.open = outcome(e);
    return;
  }
  rep.open = { ok: true };
  try {
    rep.size = node.length;
    const n = Math.min(req.window, node.length);
    const buf = new Uint8Array(n);
    try {
      await node.pread(0, buf);
      rep.read = { ok: true };
    } catch (e) {
      rep.read = outcome(e);
      return;
    }
    if (req.qemuRaw) {
      const q = await Deno.readFile(req.qemuRaw);
      const m = Math.min(q.length, buf.length);
      let at = -1;
      for (let i = 0; i < m; i++) {
        if (q[i] !== buf[i]) {
          at = i;
          break;
        }
      }
      if (at < 0 && q.length !== buf.length) at = m;
      rep.diffAt = at;
    }
  } finally {
    await node.close().catch(() => {});
  }
}

/** Expected bytes of successful writes (later writes win; bytes a failed write touched are unknown). */
function expectation(writes: CaseWrite[], results: Outcome[]): Map<number, number> {
  const exp = new Map<number, number>();
  writes.forEach((w, i) => {
    for (let o = w.off; o < w.off + w.len; o++) {
      if (results[i]?.ok) exp.set(o, w.byte);
      else exp.delete(o);
    }
  });
  return exp;
}

/** Reads back the ranges of the successful writes; the first guest offset that is not what was written, if any. */
async function firstWrong(node: BlockNode, writes: CaseWrite[], results: Outcome[], exp: Map<number, number>): Promise<number | undefined> {
  for (const [i, w] of writes.entries()) {
    if (!results[i]?.ok) continue;
    const buf = new Uint8Array(w.len);
    await node.pread(w.off, buf);
    for (let i = 0; i < w.len; i++) {
      const want = exp.get(w.off + i);
      if (want !== undefined && buf[i] !== want) return w.off + i;
    }
  }
  return undefined;
}

async function writePart(req: CaseRequest, rep: CaseReply): Promise<void> {
  if (!req.rw) return;
  let node: BlockNode;
  try {
    node = await openImage(req.rw, false, req.encrypted);
  } catch (e) {
    rep.rwOpen = outcome(e);
    return;
  }
  rep.rwOpen = { ok: true };
  rep.writes = [];
  let closed = false;
  try {
    const writes = req.writes.filter((w) => w.off + w.len <= node.length);
    rep.writesUsed = writes;
    for (const w of writes) {
      try {
        await node.pwrite(w.off, new Uint8Array(w.len).fill(w.byte));
        rep.writes.push({ ok: true });
      } catch (e) {
        rep.writes.push(outcome(e));
      }
    }
    const exp = expectation(writes, rep.writes);
    try {
      rep.readbackWrong = await firstWrong(node, writes, rep.writes, exp);
    } catch (e) {
      // Reading back what was written must work when the writes worked (-2: the read failed), unless
      // a later write found corruption: the node then refuses reads, and the reopen below reads back.
      if (!(e instanceof BlockError && /marked corrupt/.test(e.message))) rep.readbackWrong = -2;
    }
    try {
      await node.flush();
      closed = true;
      await node.close();
      rep.close = { ok: true };
    } catch (e) {
      rep.close = outcome(e);
    }
    if (!rep.close.ok) return;
    // Reopen and read back: what was reported written is in the image.
    let again: BlockNode;
    try {
      again = await openImage(req.rw, true, req.encrypted);
      rep.reopen = { ok: true };
    } catch (e) {
      rep.reopen = outcome(e);
      return;
    }
    try {
      rep.reopenWrong = await firstWrong(again, writes, rep.writes, exp);
    } catch (e) {
      rep.reopen = outcome(e);
    } finally {
      await again.close().catch(() => {});
    }
  } finally {
    if (!closed) await node.close().catch(() => {});
  }
}

async function checkPart(
  path: string | undefined,
  repair: boolean,
  encrypted: boolean | undefined,
): Promise<CaseReply["check"] | undefined> {
  if (!path) return undefined;
  let node: BlockNode;
  try {
    node = await open(spec(path, encrypted), { readOnly: !repair, check: true, forceShare: !repair });
  } catch (e) {
    return outcome(e);
  }
  try {
    const r = await node.check(repair ? { repair: "all" } : {});
    return {
      ok: true,
      corruptions: r.corruptions,
      leaks: r.leaks,
      checkErrors: r.checkErrors,
      ...(repair ? { fixed: r.corruptionsFixed + r.leaksFixed } : {}),
    };
  } catch (e) {
    return outcome(e);
  } finally {
    await node.close().catch(() => {});
  }
}

/** Runs blkgraph's side of one case. */
export async function runCase(req: CaseRequest): Promise<CaseReply> {
  const rep: CaseReply = { id: req.id, open: { ok: false }, rss: 0 };
  if (req.encrypted && !hasSecret(FUZZ_SECRET.id)) defineObject(FUZZ_SECRET.object);
  await readOnlyPart(req, rep);
  await writePart(req, rep);
  rep.check = await checkPart(req.check, false, req.encrypted);
  rep.repair = await checkPart(req.repair, true, req.encrypted);
  rep.rss = Deno.memoryUsage().rss;
  return rep;
}
