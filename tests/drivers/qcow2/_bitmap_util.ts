/**
 * Helpers for the persistent dirty bitmap tests: what QEMU sees of a
 * bitmap (qemu-nbd -B + nbdinfo --map), what qemu-img info lists, and a
 * crash copy of an image that is still open.
 *
 * @module
 */

import type { BlockNode } from "../../../mod.ts";
import { run, runOk } from "../../_helpers/qemu.ts";

let sockets = 0;

/**
 * The dirty extents of bitmap `name` as QEMU exports them: `qemu-nbd -r -B
 * name` read by `nbdinfo --map`. `image` opens the image with `--image-opts`
 * and `objects` (`--object ...` arguments) instead: an encrypted image.
 */
export async function qemuDirty(path: string, name: string, image?: { spec: string; objects: string[] }): Promise<string[]> {
  const sock = `${path}.${Deno.pid}.${++sockets}.sock`;
  const target = image ? [...image.objects, "--image-opts", image.spec] : ["-f", "qcow2", path];
  const child = new Deno.Command("qemu-nbd", {
    args: ["-r", "-B", name, "-k", sock, ...target],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const err = new Response(child.stderr).text();
  try {
    // Bounded wait for the socket: 250 x 20 ms.
    for (let i = 0; i < 250; i++) {
      try {
        if (Deno.statSync(sock).isSocket) break;
      } catch { /* not yet */ }
      await new Promise((r) => setTimeout(r, 20));
    }
    const r = await run("nbdinfo", [`--map=qemu:dirty-bitmap:${name}`, `nbd+unix:///?socket=${sock}`]);
    if (r.code !== 0) throw new Error(`nbdinfo --map failed: ${r.stderr} ${await Promise.race([err, Promise.resolve("")])}`);
    return r.stdout.trim().split("\n").map((l) => l.trim().split(/\s+/)).filter((f) => f[2] === "1").map((f) => `${f[0]}+${f[1]}`);
  } finally {
    try {
      child.kill("SIGTERM");
    } catch { /* gone */ }
    await child.status;
    await err;
  }
}

/** The dirty extents of bitmap `name` as blkgraph reads them. */
export async function ourDirty(node: BlockNode, name: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of node.bitmaps.dirtyRanges(name)) out.push(`${e.offset}+${e.length}`);
  return out;
}

/** qemu-img info's `bitmaps` (format-specific data), or [] when there are none. */
export async function qemuBitmaps(path: string): Promise<unknown[]> {
  const info = JSON.parse((await runOk("qemu-img", ["info", "--output=json", "-U", path])).stdout);
  return info["format-specific"]?.data?.bitmaps ?? [];
}

/** A copy of the image file as it is now (what a crash would leave once the last flush is durable). */
export async function crashCopy(path: string, to: string): Promise<void> {
  await Deno.copyFile(path, to);
}
