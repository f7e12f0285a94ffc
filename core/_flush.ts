/**
 * The flush path of a node: driver caches are written back (flush_to_os),
 * this node's writes are made durable (flush_to_disk, skipped when nothing
 * was written since the last flush), then the writable children flush. One
 * flush of a node runs at a time; each node of a flush's chain counts (and
 * its listeners see) the disk flushes it causes at or below it.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import { newRequest, type NodeEventOf, type NodeListenerOf } from "./request.ts";
import type { RequestInfo, RequestOptions } from "./types.ts";
import { type CoreNode, coreOf, type NodeCore } from "./_node_core.ts";

/** For each flush request, the cores flushing on its behalf right now (outermost first). */
const flushChains = new WeakMap<RequestInfo, NodeCore<never>[]>();

/** `BlockNode.flush`. */
export function flushRequest<N extends CoreNode<N>>(c: NodeCore<N>, opts: RequestOptions): Promise<void> {
  if (c.listeners.length) return c.span("flush", 0, 0, opts, (o) => flush(c, o));
  return flush(c, opts);
}

function flush<N extends CoreNode<N>>(c: NodeCore<N>, opts: RequestOptions): Promise<void> {
  if (c.closed) return Promise.reject(new BlockError("EIO", `Cannot flush node '${c.name}': node is closed`, { node: c.name }));
  // Flushes of one node run one at a time; a flush that arrives while one
  // runs waits for it and then runs itself (it may cover newer writes).
  const prev = c.flushing;
  const run = prev ? prev.catch(() => {}).then(() => flushNow(c, opts)) : flushNow(c, opts);
  const mine = run.finally(() => {
    if (c.flushing === mine) c.flushing = null;
  });
  c.flushing = mine;
  return mine;
}

async function flushNow<N extends CoreNode<N>>(c: NodeCore<N>, opts: RequestOptions): Promise<void> {
  const req = opts.req ?? newRequest(c.name, "flush", 0, 0);
  c.stats.flushRequests++;
  let chain = flushChains.get(req) as NodeCore<N>[] | undefined;
  if (!chain) flushChains.set(req, (chain = []) as NodeCore<never>[]);
  chain.push(c);
  try {
    await flushSteps(c, req, chain);
  } finally {
    chain.splice(chain.lastIndexOf(c), 1);
  }
}

async function flushSteps<N extends CoreNode<N>>(c: NodeCore<N>, req: RequestInfo, chain: NodeCore<N>[]): Promise<void> {
  const inst = c.inst;
  // flush_to_os is raised on every flush, as QEMU raises BLKDBG_FLUSH_TO_OS whether or not the driver writes anything back.
  const ev = c.ownEvent("flush_to_os", req);
  if (ev) await ev;
  if (inst.flushToOs) await inst.flushToOs({ req });
  const gen = c.writeGen;
  if (inst.flush) {
    if (c.noFlush || gen === c.flushedGen) {
      c.stats.flushesSkipped++;
    } else {
      await c.ownEvent("flush_to_disk", req);
      // Each listener once, though the same one may listen on several nodes of the chain (a trace of the graph).
      let fns: Set<NodeListenerOf<N>> | undefined;
      for (const n of chain) for (const l of n.listeners) (fns ??= new Set()).add(l);
      if (fns) {
        const e: NodeEventOf<N> = { kind: "flush", node: c.node, time: performance.now(), req };
        for (const l of fns) l(e);
      }
      await inst.flush({ req });
      c.driverFlushes++;
      for (const n of chain) n.stats.flushes++;
    }
  }
  const flushChildren = async () => {
    if (inst.flushChildren) return await inst.flushChildren({ req });
    for (const [role, child] of c.node.children) {
      if (role === "backing" || child.readOnly) continue;
      await child.flush({ req });
    }
  };
  // A filter's intercept sees a flush as QEMU's filters see flush_to_disk: only
  // when it can reach a disk (not cache.no-flush) and something was written since the last one.
  if (c.node.driver.kind === "filter" && !c.noFlush && gen !== c.flushedGen) {
    await c.forward({ op: "flush", offset: 0, length: 0, req }, flushChildren);
  } else await flushChildren();
  c.flushedGen = gen;
}

/** Flushes that reached a driver on this node and every node below it. */
export function flushCount<N extends CoreNode<N>>(c: NodeCore<N>): number {
  let n = c.driverFlushes;
  for (const child of new Set(c.node.children.values())) n += flushCount(coreOf(child));
  return n;
}
