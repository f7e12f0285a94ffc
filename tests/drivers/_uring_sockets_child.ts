/**
 * Counts this process's sockets around a ring's life: `deno run -A
 * _uring_sockets_child.ts PATH` opens a ring, reads PATH through it with
 * O_DIRECT, closes it, and prints `{before, open, closed}` as JSON. A
 * process of its own, because `deno test --parallel` runs other test files
 * in the same process, whose sockets come and go at any moment.
 *
 * @module
 */

import { Uring } from "../../drivers/_file_uring.ts";
import { alignedBuffer, type Libc, loadLibc, O_CLOEXEC, O_RDONLY } from "../../drivers/_file_libc.ts";

function sockets(): number {
  return [...Deno.readDirSync("/proc/self/fd")].filter((e) => {
    try {
      return Deno.readLinkSync(`/proc/self/fd/${e.name}`).startsWith("socket:");
    } catch {
      return false;
    }
  }).length;
}

const libc = loadLibc() as Libc;
const fd = libc.open(Deno.args[0], O_RDONLY | O_CLOEXEC | libc.O_DIRECT, 0);
if (fd < 0) throw new Error(`open ${Deno.args[0]}: ${fd}`);
const before = sockets();
const ring = Uring.open(4) as Uring;
const got = await ring.read(fd, alignedBuffer(libc, 4096, 4096), 0);
const open = sockets();
await ring.close();
const closed = sockets();
libc.close(fd);
console.log(JSON.stringify({ before, open, closed, got }));
