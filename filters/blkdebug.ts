/**
 * The `blkdebug` filter (QEMU's block/blkdebug.c): sits under a format node
 * as its `file` child, receives the BLKDBG events the format raises, and
 * injects errors, moves a small state machine, suspends requests at
 * breakpoints and traces events — for testing error paths.
 *
 * Options (as QEMU): `config` (path of an ini file with `[inject-error]` and
 * `[set-state]` sections), inline `inject-error` / `set-state` rule lists,
 * `align`, `max-transfer`, `opt-write-zero`, `max-write-zero`,
 * `opt-discard`, `max-discard`, `take-child-perms`, `share-child-perms`.
 * The child is `image` (or `file`). Filename syntax: `blkdebug:CONFIG:IMAGE`.
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * await using img = await open({
 *   driver: "raw",
 *   file: {
 *     driver: "blkdebug",
 *     "inject-error": [{ event: "l2_update", errno: "ENOSPC", once: true }],
 *     image: { driver: "memory", size: 65536 },
 *   },
 * });
 * await img.event("l2_update"); // arms the rule
 * await img.pwrite(0, new Uint8Array(512)).catch((e) => console.log(e.code)); // ENOSPC
 * ```
 *
 * @module
 */

import { BlockError, ERRNO_MESSAGES } from "../core/errors.ts";
import { type BlkdebugEvent, isBlkdebugEvent } from "../core/events.ts";
import type { BlockNode } from "../core/node.ts";
import { checkKnownOptions } from "../core/options.ts";
import { registerDriver } from "../core/registry.ts";
import type { BlockLimits, FilterCall, RequestInfo, WriteZeroesOptions } from "../core/types.ts";
import type { BlockDriver, DriverInstance, OpenContext } from "../core/node.ts";
import {
  BLKDEBUG_OPTIONS,
  blkdebugExactFilename,
  type BlkdebugIoType,
  type BlkdebugRule,
  type InjectErrorRule,
  IOTYPE_BIT,
  normaliseEventName,
  parseBlkdebugFilename,
  readBlkdebugAlign,
  readBlkdebugLimits,
  readBlkdebugRules,
} from "./_blkdebug_config.ts";
import { type BlkdebugTraceListener, type BlkdebugTraceRecord, formatTraceRecord, type TraceLogOptions } from "./_blkdebug_trace.ts";

export {
  BLKDEBUG_IO_TYPES,
  type BlkdebugIoType,
  type BlkdebugRule,
  type InjectErrorRule,
  parseBlkdebugConfig,
  type SetStateRule,
} from "./_blkdebug_config.ts";
export { type BlkdebugTraceListener, type BlkdebugTraceRecord, formatTraceRecord, type TraceLogOptions } from "./_blkdebug_trace.ts";

interface BreakRule {
  readonly action: "break";
  readonly event: BlkdebugEvent;
  readonly state: 0;
  readonly tag: string;
}

type AnyRule = BlkdebugRule | BreakRule;

interface Suspended {
  tag: string;
  resume: () => void;
}

/**
 * A blkdebug node's driver instance: rules, state, breakpoints and tracing.
 * Get it with {@linkcode getBlkdebug} from any node above it.
 */
export class BlkdebugInstance implements DriverInstance {
  /** Limits from the `align`, `max-transfer`, ... options. */
  readonly limits: Partial<BlockLimits>;
  #name: string;
  #node: BlockNode;
  #child: BlockNode;
  #state = 1;
  #rules = new Map<BlkdebugEvent, AnyRule[]>();
  #active: InjectErrorRule[] = [];
  #activeEvent: BlkdebugEvent | undefined;
  #suspended: Suspended[] = [];
  #waiters = new Map<string, (() => void)[]>();
  #listeners: BlkdebugTraceListener[] = [];

  /** Builds the instance of `node` over `child` with `rules` (done by the driver's open). */
  constructor(node: BlockNode, child: BlockNode, rules: readonly BlkdebugRule[], limits: Partial<BlockLimits>) {
    this.#name = node.name;
    this.#node = node;
    this.#child = child;
    this.limits = limits;
    for (const r of rules) this.#addRule(r);
  }

  /** The current state of the state machine (starts at 1). */
  get state(): number {
    return this.#state;
  }

  /** Name of the blkdebug node. */
  get nodeName(): string {
    return this.#name;
  }

  #addRule(r: AnyRule): void {
    // Copy on change: debugEvent may be iterating the old list.
    this.#rules.set(r.event, [...(this.#rules.get(r.event) ?? []), r]);
  }

  #removeRule(r: AnyRule): void {
    const list = this.#rules.get(r.event);
    if (!list) return;
    const next = list.filter((x) => x !== r);
    if (next.length) this.#rules.set(r.event, next);
    else this.#rules.delete(r.event);
  }

  // ---- events -----------------------------------------------------------

  /** Receives a BLKDBG event: arms inject rules, runs set-state rules, suspends at breakpoints. */
  debugEvent(event: BlkdebugEvent, req: RequestInfo | undefined): Promise<void> | void {
    const rules = this.#rules.get(event);
    let suspend: string[] | undefined;
    if (rules) {
      const old = this.#state;
      let next = old;
      let armed = 0;
      for (const r of rules) {
        if (r.state !== 0 && r.state !== old) continue;
        if (r.action === "inject-error") {
          // As QEMU: the first matching inject rule of an event replaces the armed set.
          if (armed++ === 0) {
            this.#active = [];
            this.#activeEvent = event;
          }
          this.#active.push(r);
        } else if (r.action === "set-state") {
          next = r.newState;
        } else {
          (suspend ??= []).push(r.tag);
          this.#removeRule(r);
        }
      }
      this.#state = next;
    }
    if (this.#listeners.length) this.#trace({ kind: "event", node: this.#name, time: performance.now(), event, req, state: this.#state });
    if (suspend) return this.#suspend(suspend);
  }

  async #suspend(tags: string[]): Promise<void> {
    for (const tag of tags) {
      await new Promise<void>((resolve) => {
        this.#suspended.push({ tag, resume: resolve });
        const waiters = this.#waiters.get(tag);
        if (waiters) {
          this.#waiters.delete(tag);
          for (const w of waiters) w();
        }
      });
    }
  }

  // ---- breakpoints ------------------------------------------------------

  /** Sets a breakpoint: the next request raising `event` is suspended under `tag`. */
  debugBreakpoint(eventName: string, tag: string): void {
    const event = normaliseEventName(eventName);
    if (!isBlkdebugEvent(event)) {
      throw new BlockError("ENOENT", `Cannot set breakpoint '${tag}' on node '${this.#name}': unknown event '${event}'`, {
        node: this.#name,
      });
    }
    this.#addRule({ action: "break", event, state: 0, tag });
  }

  /** Resolves once a request is suspended at `tag` (at once if one already is). */
  debugWaitBreak(tag: string): Promise<void> {
    if (this.debugIsSuspended(tag)) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.#waiters.get(tag);
      if (list) list.push(resolve);
      else this.#waiters.set(tag, [resolve]);
    });
  }

  /** Resumes the request suspended at `tag`; ENOENT when there is none. */
  debugResume(tag: string): void {
    const i = this.#suspended.findIndex((s) => s.tag === tag);
    if (i < 0) {
      throw new BlockError("ENOENT", `Cannot resume '${tag}' on node '${this.#name}': no request is suspended at that tag`, {
        node: this.#name,
      });
    }
    const [s] = this.#suspended.splice(i, 1);
    s.resume();
  }

  /** Removes breakpoints named `tag` and resumes requests suspended there; ENOENT when there are none. */
  debugRemoveBreakpoint(tag: string): void {
    let found = false;
    for (const s of this.#suspended.filter((x) => x.tag === tag)) {
      this.#suspended.splice(this.#suspended.indexOf(s), 1);
      s.resume();
      found = true;
    }
    for (const list of [...this.#rules.values()]) {
      for (const r of list) {
        if (r.action === "break" && r.tag === tag) {
          this.#removeRule(r);
          found = true;
        }
      }
    }
    if (!found) {
      throw new BlockError(
        "ENOENT",
        `Cannot remove breakpoint '${tag}' on node '${this.#name}': no breakpoint or suspended request has that tag`,
        {
          node: this.#name,
        },
      );
    }
  }

  /** Tells whether a request is suspended at `tag`. */
  debugIsSuspended(tag: string): boolean {
    return this.#suspended.some((s) => s.tag === tag);
  }

  // ---- tracing ----------------------------------------------------------

  /** Calls `fn` for every event, flush and injected error; returns a function that stops it. */
  addTraceListener(fn: BlkdebugTraceListener): () => void {
    this.#listeners = [...this.#listeners, fn];
    return () => {
      this.#listeners = this.#listeners.filter((l) => l !== fn);
    };
  }

  #trace(r: BlkdebugTraceRecord): void {
    for (const l of this.#listeners) l(r);
  }

  // ---- error injection --------------------------------------------------

  /** Fails the request when an armed rule matches; undefined when it may proceed. */
  #inject(type: BlkdebugIoType, offset: number, bytes: number, req: RequestInfo | undefined): Promise<never> | undefined {
    const bit = IOTYPE_BIT[type];
    let rule: InjectErrorRule | undefined;
    for (const r of this.#active) {
      if ((r.iotypeMask & bit) === 0) continue;
      if (r.offset === -1 || (bytes > 0 && r.offset >= offset && r.offset < offset + bytes)) {
        rule = r;
        break;
      }
    }
    if (!rule) return undefined;
    const event = this.#activeEvent!;
    if (rule.once) {
      this.#active = this.#active.filter((r) => r !== rule);
      this.#removeRule(rule);
    }
    const node = this.#node;
    if (node.listening) {
      node.emit({ kind: "inject", node, time: performance.now(), req, op: type, offset, length: bytes, code: rule.code, event });
    }
    if (this.#listeners.length) {
      this.#trace({
        kind: "error",
        node: this.#name,
        time: performance.now(),
        event,
        state: this.#state,
        code: rule.code,
        op: type,
        offset,
        length: bytes,
      });
    }
    const what = type === "flush" ? "flush" : `${type} ${bytes} bytes at offset ${offset} on`;
    const err = new BlockError(
      rule.code,
      `Cannot ${what} node '${this.#name}': ${ERRNO_MESSAGES[rule.code]} (injected by blkdebug rule for event ${event})`,
      { node: this.#name, offset, length: bytes },
    );
    if (rule.immediately) throw err;
    // QEMU yields to the event loop before failing a request that is not `immediately`.
    return new Promise((_, reject) => setTimeout(() => reject(err), 0));
  }

  // ---- requests ---------------------------------------------------------

  /**
   * Every request passing to the image: an armed inject-error rule whose
   * iotype matches fails it (QEMU's rule_check); otherwise it passes on.
   * Flushes are traced. What the core promises — alignment and max transfer
   * of reads and writes — is asserted on arrival, as blkdebug_co_preadv does.
   */
  intercept<T>(call: FilterCall, next: () => Promise<T>): Promise<T> {
    if (call.op === "flush" && this.#listeners.length) {
      this.#trace({ kind: "flush", node: this.#name, time: performance.now(), req: call.req, state: this.#state });
    }
    if (call.op === "read" || call.op === "write") this.#assertArrival(call);
    if (this.#active.length && call.op !== "truncate") {
      const f = this.#inject(call.op, call.offset, call.length, call.req);
      if (f) return f as Promise<never>;
    }
    return next();
  }

  /**
   * Write-zeroes, as QEMU's blkdebug_co_pwrite_zeroes: a piece below max(`align`, `opt-write-zero`) is refused (ENOTSUP),
   * so the layer above writes zero buffers there; the rest passes on after the rule check.
   */
  pwriteZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    const align = Math.max(this.limits.requestAlignment ?? 1, this.limits.optWriteZero ?? 0);
    if (length >= align) {
      const call: FilterCall = { op: "write-zeroes", offset, length, fua: opts.fua, req: opts.req };
      return this.intercept(call, () => this.#child.pwriteZeroes(offset, length, opts));
    }
    const why = `Cannot write zeroes to ${length} bytes at offset ${offset} on node '${this.#name}': below blkdebug's alignment ${align}`;
    return Promise.reject(new BlockError("ENOTSUP", why, { node: this.#name, offset, length }));
  }

  #assertArrival(call: FilterCall): void {
    const align = this.limits.requestAlignment ?? 1;
    const max = this.limits.maxTransfer ?? 0;
    if (call.offset % align !== 0 || call.length % align !== 0 || (max && call.length > max)) {
      throw new BlockError(
        "EIO",
        `Internal error: blkdebug node '${this.#name}' got a ${call.op} of ${call.length} bytes at offset ${call.offset}, outside its align ${align} / max-transfer ${max}`,
        { node: this.#name, offset: call.offset, length: call.length },
      );
    }
  }

  /** Resumes every suspended request so close does not hang. */
  close(): void {
    for (const s of this.#suspended.splice(0)) s.resume();
  }
}

async function openBlkdebug(ctx: OpenContext): Promise<DriverInstance> {
  const o = ctx.options;
  checkKnownOptions(o, BLKDEBUG_OPTIONS, "blkdebug");
  const rules = await readBlkdebugRules(o);
  const align = readBlkdebugAlign(o);
  // The image may be given as `image` (QEMU's name) or `file`; it is always attached as `image`.
  const child = await ctx.openChild("image", ctx.childSpec?.("image") ?? ctx.childSpec?.("file"), { optional: true });
  if (!child) {
    throw new BlockError(
      "EINVAL",
      `Driver 'blkdebug' needs an 'image' child: give 'image' (for example image.driver=file,image.filename=IMAGE)`,
    );
  }
  const limits = readBlkdebugLimits(o, Math.max(align, child.limits.requestAlignment));
  return new BlkdebugInstance(ctx.node, child, rules, limits);
}

/** The blkdebug filter driver. */
export const blkdebugDriver: BlockDriver = {
  name: "blkdebug",
  kind: "filter",
  protocolPrefix: "blkdebug",
  childKeys: ["image"],
  options: BLKDEBUG_OPTIONS,
  primaryChildRole: "image",
  strongOptions: [
    "config",
    "inject-error.",
    "set-state.",
    "align",
    "max-transfer",
    "opt-write-zero",
    "max-write-zero",
    "opt-discard",
    "max-discard",
  ],
  exactFilename: blkdebugExactFilename,
  parseFilename: parseBlkdebugFilename,
  open: openBlkdebug,
};

registerDriver(blkdebugDriver);

/** Finds the blkdebug instance at or below `node` (primary children first), if any. */
export function findBlkdebug(node: BlockNode): BlkdebugInstance | undefined {
  const seen = new Set<BlockNode>();
  const queue = [node];
  while (queue.length) {
    const n = queue.shift()!;
    if (seen.has(n)) continue;
    seen.add(n);
    if (n.instance instanceof BlkdebugInstance) return n.instance;
    const primary = n.primaryChild;
    if (primary) queue.unshift(primary);
    for (const c of n.children.values()) if (c !== primary) queue.push(c);
  }
  return undefined;
}

/**
 * Finds the blkdebug instance at or below `node`; ENOENT when the graph has none.
 *
 * @example
 * ```ts
 * import { getBlkdebug } from "@blkgraph/blkgraph/filters/blkdebug";
 * import { open } from "@blkgraph/blkgraph";
 * await using img = await open({ driver: "raw", file: { driver: "blkdebug", image: { driver: "memory", size: 4096 } } });
 * const dbg = getBlkdebug(img);
 * console.log(dbg.state); // 1
 * img.debug.break("pwritev", "A"); // breakpoints go through the node: the first blkdebug below gets them
 * const write = img.pwrite(0, new Uint8Array(512));
 * await img.debug.waitBreak("A");
 * img.debug.resume("A");
 * await write;
 * ```
 */
export function getBlkdebug(node: BlockNode): BlkdebugInstance {
  const f = findBlkdebug(node);
  if (!f) throw new BlockError("ENOENT", `No blkdebug node at or below node '${node.name}'`, { node: node.name });
  return f;
}

/**
 * Logs every record of the blkdebug node below `node` as text or JSON lines;
 * returns a function that stops logging.
 *
 * @example
 * ```ts
 * import { createTraceLog } from "@blkgraph/blkgraph/filters/blkdebug";
 * import { open } from "@blkgraph/blkgraph";
 * await using img = await open({ driver: "raw", file: { driver: "blkdebug", image: { driver: "memory", size: 4096 } } });
 * const lines: string[] = [];
 * const stop = createTraceLog(img, { format: "json", write: (l) => lines.push(l) });
 * await img.event("l2_load");
 * stop();
 * console.log(JSON.parse(lines[0]).event); // "l2_load"
 * ```
 */
export function createTraceLog(node: BlockNode, opts: TraceLogOptions): () => void {
  const format = opts.format ?? "text";
  return getBlkdebug(node).addTraceListener((r) => opts.write(formatTraceRecord(r, format)));
}
