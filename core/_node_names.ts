/**
 * The registry of open nodes: unique node names (given or generated), the
 * lookup by name, and what happens to nodes still open when the process
 * ends. `core/open.ts` registers every node it opens here.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import type { BlockNode } from "./node.ts";

const nodes = new Map<string, BlockNode>();
let generated = 0;

/**
 * What happens to nodes still open when the process ends:
 * - the script ends (the event loop drains): `beforeunload` closes every
 *   open graph from its top, so caches are written back and flushed, as
 *   `close()` does;
 * - `Deno.exit()`: `unload` runs no async code, so each node writes back
 *   synchronously what it can (`exitSync`: qcow2 metadata straight to a
 *   `file` node) and protocol nodes flush; what cannot be saved safely is
 *   lost as in a crash, with a warning on stderr — the image stays
 *   consistent;
 * - SIGKILL or a power cut: what the crash guarantee says — every write
 *   completed before the last completed flush survives, and the image is
 *   consistent (at worst leaked clusters).
 */
function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  globalThis.addEventListener("beforeunload", () => {
    for (const n of openRoots()) n.close().catch(() => {});
  });
  globalThis.addEventListener("unload", () => exitSyncAll());
}
let exitHooksInstalled = false;

/** Open nodes no other open node holds (the tops of the open graphs). */
function openRoots(): BlockNode[] {
  return [...nodes.values()].filter((n) => !n.hasParents && !n.closed);
}

/** Closes every open graph from its top (what the CLI does on SIGINT and SIGTERM). */
export async function closeAllNodes(): Promise<void> {
  for (const n of openRoots()) await n.close().catch(() => {});
}

function exitSyncAll(): void {
  // Formats and filters write back first; then protocol nodes make it durable.
  const all = [...nodes.values()].filter((n) => !n.closed);
  for (const n of [...all.filter((n) => n.driver.kind !== "protocol"), ...all.filter((n) => n.driver.kind === "protocol")]) {
    let ok: boolean;
    try {
      ok = n.exitSync();
    } catch {
      ok = false;
    }
    if (!ok) {
      console.error(
        `blkgraph: warning: node '${n.name}' (${n.driver.name}) was still open with unwritten data at Deno.exit(); its writes since the last flush are lost as in a crash (the image stays consistent). Close nodes, or flush, before exiting.`,
      );
    }
  }
}

/**
 * Looks up an open node by name.
 *
 * @example
 * ```ts
 * import { findNode, open } from "@blkgraph/blkgraph";
 * await using _disk = await open({ driver: "memory", size: 4096, "node-name": "scratch" });
 * console.log(findNode("scratch")?.driver.name); // memory
 * ```
 */
export function findNode(name: string): BlockNode | undefined {
  return nodes.get(name);
}

/**
 * Names of all open nodes.
 *
 * @example
 * ```ts
 * import { nodeNames, open } from "@blkgraph/blkgraph";
 * await using _disk = await open({ driver: "memory", size: 4096, "node-name": "listed" });
 * console.log(nodeNames().includes("listed")); // true
 * ```
 */
export function nodeNames(): string[] {
  return [...nodes.keys()];
}

/**
 * The node name for a new node: `name` after checking it (QEMU's node-name
 * syntax, not already open), or a generated `#blockNNN` when none is given.
 */
export function claimNodeName(name: string | undefined): string {
  if (name !== undefined) {
    if (!/^[A-Za-z][A-Za-z0-9_.-]{0,31}$/.test(name)) {
      throw new BlockError(
        "EINVAL",
        `Invalid node-name '${name}': it must start with a letter and hold only letters, digits, '-', '.' and '_' (at most 32 characters)`,
      );
    }
    if (nodes.has(name)) throw new BlockError("EEXIST", `Duplicate node name '${name}': a node with that name is already open`);
    return name;
  }
  do name = `#block${String(++generated).padStart(3, "0")}`; while (nodes.has(name));
  return name;
}

/** Registers an opened node under its name until it closes (or `unregisterNode`). */
export function registerNode(node: BlockNode): void {
  nodes.set(node.name, node);
  installExitHooks();
  node.onClose(() => nodes.delete(node.name));
}

/** Forgets a node whose driver failed to open. */
export function unregisterNode(name: string): void {
  nodes.delete(name);
}
