/**
 * Small drivers for core tests: a protocol node that records every call it
 * gets (with configurable limits and FUA support), a filter that implements
 * nothing (everything passes through), and a format that raises events.
 *
 * @module
 */

import { type BlockDriver, type BlockLimits, type BlockNode, type DriverInstance, registerDriver } from "../../mod.ts";

/** One call the spy driver received. */
export interface SpyCall {
  op: string;
  offset: number;
  length: number;
  fua?: boolean;
}

/** Shared state of spy nodes, keyed by the `tag` option. */
export const spies: Map<string, { calls: SpyCall[]; data: Uint8Array; gate?: Promise<void> }> = new Map();

/** A memory-backed protocol driver that records calls; options: tag, size, align, max-transfer, fua. */
export const spyDriver: BlockDriver = {
  name: "test-spy",
  kind: "protocol",
  open(ctx): Promise<DriverInstance> {
    const tag = String(ctx.options.tag ?? "spy");
    const size = Number(ctx.options.size ?? 65536);
    const state = { calls: [] as SpyCall[], data: new Uint8Array(size), gate: undefined as Promise<void> | undefined };
    spies.set(tag, state);
    const limits: Partial<BlockLimits> = {
      requestAlignment: Number(ctx.options.align ?? 1),
      maxTransfer: Number(ctx.options["max-transfer"] ?? 0),
    };
    return Promise.resolve({
      limits,
      supportsFua: ctx.options.fua === true || ctx.options.fua === "on",
      getLength: () => state.data.length,
      async pread(offset, buf) {
        state.calls.push({ op: "read", offset, length: buf.length });
        if (state.gate) await state.gate;
        buf.set(state.data.subarray(offset, offset + buf.length));
      },
      async pwrite(offset, data, o) {
        state.calls.push({ op: "write", offset, length: data.length, fua: o.fua });
        if (state.gate) await state.gate;
        // Write in two halves with a yield between, so a torn write would be visible.
        const half = data.length >> 1;
        state.data.set(data.subarray(0, half), offset);
        await new Promise((r) => setTimeout(r, 0));
        state.data.set(data.subarray(half), offset + half);
      },
      flush() {
        state.calls.push({ op: "flush", offset: 0, length: 0 });
      },
      truncate(len) {
        const next = new Uint8Array(len);
        next.set(state.data.subarray(0, Math.min(len, state.data.length)));
        state.data = next;
      },
    });
  },
};

/** A filter that implements nothing: every operation passes to its child. */
export const passDriver: BlockDriver = {
  name: "test-pass",
  kind: "filter",
  async open(ctx): Promise<DriverInstance> {
    await ctx.openChild("file");
    return {};
  },
};

/** A format over `file` that is a plain window and raises a chosen event on each write. */
export const eventFormatDriver: BlockDriver = {
  name: "test-events",
  kind: "format",
  async open(ctx): Promise<DriverInstance> {
    const file = (await ctx.openChild("file")) as BlockNode;
    const node = ctx.node;
    return {
      getLength: () => file.length,
      pread: (o, b, opts) => file.pread(o, b, opts),
      async pwrite(o, d, opts) {
        await node.event("l2_update", opts.req);
        await file.pwrite(o, d, opts);
      },
    };
  },
};

registerDriver(spyDriver);
registerDriver(passDriver);
registerDriver(eventFormatDriver);
