/**
 * Several images read end to end as one, as qemu-img convert reads its
 * sources (one stream of sectors, not one copy per source): requests and
 * block-status answers are split at the boundaries. `copyImage` copies
 * from it, so a target cluster that straddles two sources is written
 * once, whole (a compressed write takes whole clusters).
 *
 * @module
 */

import type { BlockNode, BlockStatus } from "./node.ts";

/** What `copyImage` reads from a source. */
export type CopySource = Pick<BlockNode, "length" | "pread" | "blockStatus" | "copyRange">;

/**
 * `sources` end to end (one source: itself).
 *
 * @example
 * ```ts
 * import { open } from "../mod.ts";
 * import { concatSources } from "./_concat.ts";
 * await using a = await open({ driver: "memory", size: 512 });
 * await using b = await open({ driver: "memory", size: 512 });
 * await b.pwrite(0, new Uint8Array(512).fill(2));
 * const both = concatSources([a, b]);
 * const buf = new Uint8Array(1024);
 * await both.pread(0, buf);
 * console.log(both.length, buf[0], buf[512]); // 1024 0 2
 * ```
 */
export function concatSources(sources: readonly BlockNode[]): CopySource {
  if (sources.length === 1) return sources[0];
  const starts: number[] = [];
  let length = 0;
  for (const s of sources) {
    starts.push(length);
    length += s.length;
  }
  /** The source holding byte `off`, and where it starts. */
  const at = (off: number) => {
    let i = starts.length - 1;
    while (i > 0 && starts[i] > off) i--;
    // An empty source holds nothing: the next one that does.
    while (i < sources.length - 1 && off - starts[i] >= sources[i].length) i++;
    return { s: sources[i], start: starts[i] };
  };
  return {
    length,
    async pread(offset, buf, opts) {
      for (let done = 0; done < buf.length;) {
        const { s, start } = at(offset + done);
        const n = Math.min(buf.length - done, start + s.length - (offset + done));
        await s.pread(offset + done - start, buf.subarray(done, done + n), opts);
        done += n;
      }
    },
    async blockStatus(offset, len, opts): Promise<BlockStatus> {
      const { s, start } = at(offset);
      return await s.blockStatus(offset - start, Math.min(len, start + s.length - offset), opts);
    },
    async copyRange(offset, len, dst, dstOffset, opts) {
      for (let done = 0; done < len;) {
        const { s, start } = at(offset + done);
        const n = Math.min(len - done, start + s.length - (offset + done));
        await s.copyRange(offset + done - start, n, dst, dstOffset + done, opts);
        done += n;
      }
    },
  };
}
