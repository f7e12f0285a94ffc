/**
 * Helpers that put a crash state into a graph: a memory node holding the
 * state's bytes under a small `x-crash-capture` filter that copies its
 * child's final content out when the graph closes (the memory node frees its
 * buffer on close, so it has to be read before).
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import { open } from "../../core/open.ts";
import { registerDriver } from "../../core/registry.ts";
import "../../drivers/memory.ts";
import type { BlockDriver, DriverInstance } from "../../core/node.ts";

const captured = new WeakMap<BlockNode, { bytes?: Uint8Array }>();

/** Pass-through filter that reads its child's content into memory on close. */
const captureDriver: BlockDriver = {
  name: "x-crash-capture",
  kind: "filter",
  async open(ctx): Promise<DriverInstance> {
    const child = (await ctx.openChild("file"))!;
    const box: { bytes?: Uint8Array } = {};
    captured.set(ctx.node, box);
    return {
      async close() {
        const out = new Uint8Array(child.length);
        if (out.length) await child.pread(0, out);
        box.bytes = out;
      },
    };
  },
};
registerDriver(captureDriver);

/** Opens a protocol-level node holding a copy of `bytes`, whose final content {@linkcode capturedBytes} returns after close. */
export async function stateNode(bytes: Uint8Array): Promise<BlockNode> {
  const node = await open({ driver: "x-crash-capture", file: { driver: "memory", size: bytes.length } });
  if (bytes.length) await node.pwrite(0, bytes);
  return node;
}

/** The content a {@linkcode stateNode} had when it was closed. */
export function capturedBytes(node: BlockNode): Uint8Array | undefined {
  return captured.get(node)?.bytes;
}
