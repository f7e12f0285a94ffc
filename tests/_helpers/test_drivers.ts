/**
 * Small drivers for core tests: a protocol node that records every call it
 * gets (with configurable limits and FUA support), a filter that implements
 * nothing (everything passes through), a format that raises events, and a
 * protocol node that records the events delivered to it.
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

/** Shared state of a spy node. */
export interface SpyState {
  /** Every call, in the order the driver received them. */
  calls: SpyCall[];
  data: Uint8Array;
  /** While set, every read and write waits for it before touching data. */
  gate?: Promise<void>;
  /** Holds the armed read or write (matched by offset and length): a read before it copies, a write after its first half. */
  hold: Gate;
  /** `read|write offset+length begin|end` for every read and write, in the order they happened. */
  log: string[];
}

/** Shared state of spy nodes, keyed by the `tag` option. */
export const spies: Map<string, SpyState> = new Map();

/** A memory-backed protocol driver that records calls; options: tag, size, align, max-transfer, fua. */
export const spyDriver: BlockDriver = {
  name: "test-spy",
  kind: "protocol",
  open(ctx): Promise<DriverInstance> {
    const tag = String(ctx.options.tag ?? "spy");
    const size = Number(ctx.options.size ?? 65536);
    const state: SpyState = { calls: [], data: new Uint8Array(size), hold: new Gate(), log: [] };
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
        const what = `read ${offset}+${buf.length}`;
        state.log.push(`${what} begin`);
        if (state.gate) await state.gate;
        await state.hold.pass(offset, buf.length);
        buf.set(state.data.subarray(offset, offset + buf.length));
        state.log.push(`${what} end`);
      },
      async pwrite(offset, data, o) {
        state.calls.push({ op: "write", offset, length: data.length, fua: o.fua });
        const what = `write ${offset}+${data.length}`;
        state.log.push(`${what} begin`);
        if (state.gate) await state.gate;
        // Write in two halves with a yield between, so a torn write would be visible.
        const half = data.length >> 1;
        state.data.set(data.subarray(0, half), offset);
        await state.hold.pass(offset, data.length);
        await new Promise((r) => setTimeout(r, 0));
        state.data.set(data.subarray(half), offset + half);
        state.log.push(`${what} end`);
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

/** A gate: holds the first request of exactly `offset`/`length` bytes that passes it until released. */
export class Gate {
  #armed: { offset: number; length: number } | undefined;
  #onReached!: () => void;
  #onRelease!: () => void;
  #released = new Promise<void>((r) => (this.#onRelease = r));
  /** Resolves when the armed request has reached the gate (and is held). */
  readonly reached: Promise<void> = new Promise<void>((r) => (this.#onReached = r));

  /** Arms the gate for the next request of `length` bytes at `offset`. */
  arm(offset: number, length: number): void {
    this.#armed = { offset, length };
  }

  /** Lets the held request continue. */
  release(): void {
    this.#onRelease();
  }

  /** Holds a request if it is the armed one. */
  async pass(offset: number, length: number): Promise<void> {
    const a = this.#armed;
    if (!a || a.offset !== offset || a.length !== length) return;
    this.#armed = undefined;
    this.#onReached();
    await this.#released;
  }
}

/** Gates of `test-gate` nodes, keyed by the `tag` option. */
export const gates: Map<string, Gate> = new Map();

/** A filter whose reads can be held at a {@linkcode Gate} (deterministic interleavings); option: tag. */
export const gateDriver: BlockDriver = {
  name: "test-gate",
  kind: "filter",
  async open(ctx): Promise<DriverInstance> {
    const file = (await ctx.openChild("file")) as BlockNode;
    const gate = new Gate();
    gates.set(String(ctx.options.tag ?? "gate"), gate);
    return {
      async pread(o, b, opts) {
        await gate.pass(o, b.length);
        await file.pread(o, b, opts);
      },
    };
  },
};

/** Reads and writes a `test-count` node passed down, keyed by its `tag` option. */
export const counts: Map<string, { reads: number; writes: number }> = new Map();

/** A filter that counts the reads and writes passing through it (option: tag). */
export const countDriver: BlockDriver = {
  name: "test-count",
  kind: "filter",
  async open(ctx): Promise<DriverInstance> {
    const file = (await ctx.openChild("file")) as BlockNode;
    const c = { reads: 0, writes: 0 };
    counts.set(String(ctx.options.tag ?? "count"), c);
    return {
      pread(o, b, opts) {
        c.reads++;
        return file.pread(o, b, opts);
      },
      pwrite(o, d, opts) {
        c.writes++;
        return file.pwrite(o, d, opts);
      },
    };
  },
};

/** The blkdebug events each `test-sink` node received, keyed by its `tag` option. */
export const sinks: Map<string, string[]> = new Map();

/** A memory-backed protocol driver that records every debug event delivered to it (options: tag, size). */
export const sinkDriver: BlockDriver = {
  name: "test-sink",
  kind: "protocol",
  open(ctx): Promise<DriverInstance> {
    const data = new Uint8Array(Number(ctx.options.size ?? 65536));
    const events: string[] = [];
    sinks.set(String(ctx.options.tag ?? "sink"), events);
    return Promise.resolve({
      getLength: () => data.length,
      pread: (o, b) => void b.set(data.subarray(o, o + b.length)),
      pwrite: (o, d) => void data.set(d, o),
      debugEvent: (event) => void events.push(event),
    });
  },
};

registerDriver(spyDriver);
registerDriver(sinkDriver);
registerDriver(passDriver);
registerDriver(eventFormatDriver);
registerDriver(gateDriver);
registerDriver(countDriver);
