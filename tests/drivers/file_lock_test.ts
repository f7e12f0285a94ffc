import assert from "node:assert/strict";
import { type BlockError, open } from "../../mod.ts";
import { run, skipUnless } from "../_helpers/qemu.ts";
import { isCode, MiB, openFile, withFile } from "./_file_helpers.ts";

Deno.test("a second writable open of the same file fails with EBUSY", async () => {
  await withFile(MiB, async (path) => {
    await using _n = await openFile(path);
    await assert.rejects(
      openFile(path),
      (e: BlockError) => e.code === "EBUSY" && e.message.includes(path) && /locked by another process/.test(e.message),
    );
  });
});

Deno.test("closing a node releases its lock", async () => {
  await withFile(MiB, async (path) => {
    const n = await openFile(path);
    await n.close();
    await using again = await openFile(path);
    assert.equal(again.length, MiB);
  });
});

Deno.test("a read-only node does not share writing with a writer, as QEMU's readers", async () => {
  await withFile(MiB, async (path) => {
    await using _w = await openFile(path);
    await assert.rejects(
      open({ driver: "file", filename: path }, { readOnly: true }),
      (e: BlockError) => e.code === "EBUSY" && /Failed to get shared "write" lock/.test(e.message),
    );
  });
});

Deno.test("a read-only node with force-share opens an image a writer holds", async () => {
  await withFile(MiB, async (path) => {
    await using _w = await openFile(path);
    await using r = await open({ driver: "file", filename: path }, { readOnly: true, forceShare: true });
    assert.equal(r.length, MiB);
    await using r2 = await open({ driver: "file", filename: path, "read-only": true, "force-share": true });
    assert.equal(r2.length, MiB);
  });
});

Deno.test("force-share on a writable node is refused", async () => {
  await withFile(MiB, async (path) => {
    await assert.rejects(
      open({ driver: "file", filename: path, "force-share": true }),
      /force-share=on can only be used with read-only images/,
    );
  });
});

Deno.test("locking=off opens a file another node holds", async () => {
  await withFile(MiB, async (path) => {
    await using _n = await openFile(path);
    await using n2 = await openFile(path, { locking: "off" });
    assert.equal((await n2.info()).locking, "none");
  });
});

Deno.test("qemu-io cannot write an image blkgraph holds for writing", { ignore: skipUnless("qemu-io") }, async () => {
  await withFile(MiB, async (path) => {
    await using _n = await openFile(path);
    const r = await run("qemu-io", ["-f", "raw", "-c", "write 0 512", path]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Failed to get "write" lock/);
  });
});

Deno.test("qemu-img convert needs -U while blkgraph holds the source for writing", { ignore: skipUnless("qemu-img") }, async () => {
  await withFile(MiB, async (path) => {
    await using _n = await openFile(path);
    const out = `${path}.copy`;
    const plain = await run("qemu-img", ["convert", "-f", "raw", "-O", "raw", path, out]);
    assert.match(plain.stderr, /Failed to get shared "write" lock/);
    const shared = await run("qemu-img", ["convert", "-U", "-f", "raw", "-O", "raw", path, out]);
    assert.equal(shared.code, 0, shared.stderr);
  });
});

Deno.test("locking=on takes the QEMU lock bytes", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path, { locking: "on" });
    assert.equal((await n.info()).locking, "ofd");
    await assert.rejects(openFile(path, { locking: "on" }), isCode("EBUSY"));
  });
});

Deno.test("qemu-io can read an image blkgraph holds read-only, but not write it", { ignore: skipUnless("qemu-io") }, async () => {
  await withFile(MiB, async (path) => {
    {
      await using _n = await open({ driver: "file", filename: path }, { readOnly: true });
      const r = await run("qemu-io", ["-r", "-f", "raw", "-c", "read 0 512", path]);
      assert.equal(r.code, 0, r.stderr);
      const w = await run("qemu-io", ["-f", "raw", "-c", "write -P 0x33 0 512", path]);
      assert.notEqual(w.code, 0);
      assert.match(w.stderr, /Failed to get "write" lock/);
    }
    await using _shared = await open({ driver: "file", filename: path }, { readOnly: true, forceShare: true });
    const w = await run("qemu-io", ["-f", "raw", "-c", "write -P 0x33 0 512", path]);
    assert.equal(w.code, 0, w.stderr);
  });
});

Deno.test("blkgraph cannot open for writing an image qemu-io holds", { ignore: skipUnless("qemu-io") }, async () => {
  await withFile(MiB, async (path) => {
    const child = new Deno.Command("qemu-io", { args: ["-f", "raw", path], stdin: "piped", stdout: "piped", stderr: "piped" })
      .spawn();
    const w = child.stdin.getWriter();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    try {
      // Once qemu-io answers a command, the image is open and locked.
      await w.write(new TextEncoder().encode("read 0 512\n"));
      let out = "";
      while (!/read 512\/512 bytes/.test(out)) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`qemu-io exited early: ${out}`);
        out += value;
      }
      await assert.rejects(openFile(path), (e: BlockError) => e.code === "EBUSY" && /Failed to get (shared )?"write" lock/.test(e.message));
    } finally {
      await w.write(new TextEncoder().encode("quit\n")).catch(() => {});
      await w.close().catch(() => {});
      await reader.cancel().catch(() => {});
      await child.stderr.cancel().catch(() => {});
      await child.status;
    }
  });
});
