/**
 * NBD has no resize (QEMU's nbd_co_truncate): an exact truncate to another
 * size fails "Cannot resize NBD nodes", a non-exact one (image creation,
 * qemu-io's truncate) is fine up to the export's size and "Cannot grow NBD
 * nodes" past it. So an image can be created into an existing export, as
 * qemu-img convert does into a qemu-nbd export (iotest 302).
 */

import assert from "node:assert/strict";
import { BlockError, createImage, open } from "../../../mod.ts";
import { serveNbd } from "../../../drivers/nbd/mod.ts";
import { run, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import type { CliIO } from "../../../cli/_common.ts";
import { qemuImg } from "../../../cli/qemu-img.ts";
import { qemuIo } from "../../../cli/qemu-io.ts";
import { sockPath } from "./_helpers.ts";

const SIZE = 1 << 20;

async function withExport(fn: (uri: string) => Promise<void>): Promise<void> {
  await using dir = await tempDir("blkgraph-nbd-t-");
  const server = await serveNbd(await open({ driver: "memory", size: SIZE }), { socket: sockPath(dir.path), closeNode: true });
  try {
    await fn(server.uri);
  } finally {
    await server.close();
  }
}

function code(e: unknown): string | undefined {
  return e instanceof BlockError ? `${e.code}: ${e.qemuMessage}` : undefined;
}

Deno.test("nbd truncate(): exact to another size is ENOTSUP 'Cannot resize NBD nodes'; to the export's size it is fine", async () => {
  await withExport(async (uri) => {
    await using node = await open({ driver: "raw", file: { filename: uri } });
    await node.truncate(SIZE);
    await assert.rejects(node.truncate(SIZE / 2), (e) => code(e) === "ENOTSUP: Cannot resize NBD nodes");
    await assert.rejects(node.truncate(SIZE * 2), (e) => code(e) === "ENOTSUP: Cannot resize NBD nodes");
    assert.equal(node.length, SIZE);
  });
});

Deno.test("nbd truncate({exact: false}): a smaller size leaves the export as it is; a larger one is EINVAL 'Cannot grow NBD nodes'", async () => {
  await withExport(async (uri) => {
    await using node = await open({ driver: "raw", file: { filename: uri } });
    await node.truncate(4096, { exact: false });
    assert.equal(node.length, SIZE);
    await assert.rejects(node.truncate(SIZE + 512, { exact: false }), (e) => code(e) === "EINVAL: Cannot grow NBD nodes");
  });
});

Deno.test("createImage() into an existing NBD export writes the image over it, the old first sector zeroed", async () => {
  await withExport(async (uri) => {
    {
      await using raw = await open({ driver: "raw", file: { filename: uri } });
      await raw.pwrite(0, new Uint8Array(SIZE).fill(0xaa));
    }
    await createImage(uri, "qcow2", 64 << 20);
    {
      await using img = await open({ driver: "qcow2", file: { filename: uri } });
      assert.equal(img.length, 64 << 20);
      assert.equal(img.file!.length, SIZE);
    }
    // raw, smaller than the export: the export keeps its size, its first sector reads as zeros.
    await createImage(uri, "raw", 4096);
    await using raw = await open({ driver: "raw", file: { filename: uri } });
    const head = new Uint8Array(512);
    await raw.pread(0, head);
    assert.ok(head.every((b) => b === 0));
    const tail = new Uint8Array(512);
    await raw.pread(SIZE - 512, tail);
    assert.ok(tail.every((b) => b === 0xaa));
    await assert.rejects(createImage(uri, "raw", SIZE * 2), (e) => code(e) === "EINVAL: Cannot grow NBD nodes");
  });
});

Deno.test({
  name: "qemu-io truncate on an NBD export is not exact, qemu-img resize is, as QEMU's tools",
  ignore: skipUnless("qemu-io", "qemu-img"),
  async fn() {
    await withExport(async (uri) => {
      const cases: [string, (args: string[], io: CliIO) => Promise<number>, string[]][] = [
        ["qemu-io", qemuIo, ["-f", "raw", "-c", "truncate 512k", "-c", "length", "-c", "truncate 2M", uri]],
        ["qemu-img", qemuImg, ["resize", "-f", "raw", uri, "2M"]],
      ];
      for (const [tool, ours, args] of cases) {
        const theirs = await run(tool, args);
        let out = "";
        const code = await ours(args, { stdout: (s) => void (out += s), stderr: (s) => void (out += s) });
        assert.deepEqual([code, out], [theirs.code, theirs.stdout + theirs.stderr], `${tool} ${args.join(" ")}`);
      }
    });
  },
});
