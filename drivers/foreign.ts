/**
 * Recognising the image formats QEMU probes that blkgraph has no driver for
 * (vmdk, vhdx, vpc, vdi, qed, parallels, dmg, cloop, bochs and qcow
 * version 1), with QEMU's own probe rules and scores. Probing a file in one
 * of them fails with `Image format 'vhdx' is not supported` instead of
 * reading the container as a raw disk; asking for one by name (`-f vmdk`)
 * fails the same way. An explicit `raw` still opens such a file as bytes.
 * A format that later gets a real driver registers it with the same name.
 *
 * @example
 * ```ts
 * import { probeFormat } from "../mod.ts";
 * const head = new TextEncoder().encode("vhdxfile");
 * try {
 *   probeFormat(head);
 * } catch (e) {
 *   console.log((e as Error).message); // Image format 'vhdx' is not supported
 * }
 * ```
 *
 * @module
 */

import { registerUnsupportedFormat } from "../core/registry.ts";

const ascii = new TextDecoder("latin1");

function text(head: Uint8Array, at: number, n: number): string {
  return ascii.decode(head.subarray(at, Math.min(head.length, at + n)));
}

function be32(head: Uint8Array, at: number): number {
  return head.length >= at + 4 ? new DataView(head.buffer, head.byteOffset).getUint32(at) : -1;
}

function le32(head: Uint8Array, at: number): number {
  return head.length >= at + 4 ? new DataView(head.buffer, head.byteOffset).getUint32(at, true) : -1;
}

/** A NUL-terminated string field of a fixed-size header (C's strcmp against it). */
function cString(head: Uint8Array, at: number, size: number): string {
  const field = head.subarray(at, Math.min(head.length, at + size));
  const nul = field.indexOf(0);
  return ascii.decode(nul < 0 ? field : field.subarray(0, nul));
}

/** vmdk: a sparse extent's magic ("COWD", "KDMV"), or a text descriptor whose first line that is not a comment or blank is version=1|2|3. */
function vmdk(head: Uint8Array): number {
  if (head.length < 4) return 0;
  const magic = be32(head, 0);
  if (magic === 0x434f5744 || magic === 0x4b444d56) return 100;
  const s = ascii.decode(head);
  let p = 0;
  while (p < s.length) {
    if (s[p] === "#") {
      const nl = s.indexOf("\n", p);
      p = nl < 0 ? s.length : nl + 1;
      continue;
    }
    if (s[p] === " ") {
      while (p < s.length && s[p] === " ") p++;
      if (p < s.length && s[p] === "\r") p++;
      if (p >= s.length || s[p] !== "\n") return 0;
      p++;
      continue;
    }
    return /^version=[123]\r?\n/.test(s.slice(p, p + 11)) ? 100 : 0;
  }
  return 0;
}

/** QEMU's probes for the formats blkgraph does not implement: name, score function. */
const FOREIGN: readonly [string, (head: Uint8Array, filename?: string) => number][] = [
  ["vmdk", vmdk],
  ["vhdx", (h) => (text(h, 0, 8) === "vhdxfile" ? 100 : 0)],
  ["vpc", (h) => (text(h, 0, 8) === "conectix" ? 100 : 0)],
  ["vdi", (h) => (h.length >= 512 && le32(h, 0x40) === 0xbeda107f ? 100 : 0)],
  ["qed", (h) => (h.length >= 64 && le32(h, 0) === 0x00444551 ? 100 : 0)],
  [
    "parallels",
    (h) => (h.length >= 64 && ["WithoutFreeSpace", "WithouFreSpacExt"].includes(text(h, 0, 16)) && le32(h, 16) === 2 ? 100 : 0),
  ],
  ["dmg", (_h, filename) => (filename !== undefined && filename.length > 4 && filename.endsWith(".dmg") ? 2 : 0)],
  [
    "cloop",
    (h) => {
      const magic = "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";
      const n = Math.min(magic.length, h.length);
      return text(h, 0, n) === magic.slice(0, n) ? 2 : 0;
    },
  ],
  [
    "bochs",
    (h) =>
      h.length >= 512 && cString(h, 0, 32) === "Bochs Virtual HD Image" && cString(h, 32, 16) === "Redolog" &&
        cString(h, 48, 16) === "Growing" && [0x00020000, 0x00010000].includes(le32(h, 64))
        ? 100
        : 0,
  ],
  ["qcow", (h) => (h.length >= 48 && be32(h, 0) === 0x514649fb && be32(h, 4) === 1 ? 100 : 0)],
];

for (const [name, probe] of FOREIGN) registerUnsupportedFormat(name, probe);
