/**
 * Refreshed filenames (QEMU's bdrv_refresh_filename), compared with the
 * `image:` line of the real qemu-img info on the same specs: a format over a
 * file is named by the file unless a strong option was given, protocols
 * build their own names, and everything else is `json:{...}` in QEMU's key
 * order.
 */

import assert from "node:assert/strict";
import { open } from "../../mod.ts";
import { refreshFilename } from "../../core/_filename.ts";
import { cli } from "../cli/_run.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

const ignore = skipUnless("qemu-img");
const imageLine = (out: string) => out.split("\n").find((l) => l.startsWith("image: "));

Deno.test("refreshFilename() names a format over a file by the file, and uses json: once a strong option is given", async () => {
  await using d = await tempDir();
  const f = `${d.path}/a.raw`;
  await Deno.writeFile(f, new Uint8Array(65536));
  const file = { driver: "file", filename: f };
  await using plain = await open({ driver: "raw", file });
  assert.equal(refreshFilename(plain).filename, f);
  await using windowed = await open({ driver: "raw", size: 4096, file: { ...file, locking: "off" } });
  assert.equal(refreshFilename(windowed).filename, `json:{"driver": "raw", "size": 4096, "file": {"driver": "file", "filename": "${f}"}}`);
});

Deno.test({
  name: "info's image: line is qemu-img's for formats, filters, blkdebug, null-co and encrypted qcow2 given as options",
  ignore,
  async fn() {
    await using d = await tempDir();
    const q = `${d.path}/a.qcow2`;
    const e = `${d.path}/e.qcow2`;
    const secret = ["--object", "secret,id=sec0,data=123456"];
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", q, "1M"]);
    await runOk("qemu-img", ["create", "-q", ...secret, "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=sec0", e, "1M"]);
    await Deno.writeTextFile(`${d.path}/42`, "");
    const specs = [
      `driver=qcow2,file.filename=${q},lazy-refcounts=on`,
      `driver=raw,offset=512,file.driver=file,file.filename=${q},file.locking=off`,
      `driver=qcow2,file.driver=blkdebug,file.image.filename=${q}`,
      `driver=qcow2,file.driver=blkdebug,file.config=${d.path}/42,file.image.filename=${q}`,
      `driver=qcow2,file.driver=blkdebug,file.align=4096,file.image.filename=${q}`,
      "driver=null-co,size=4096",
      "driver=null-co",
      `driver=qcow2,file.filename=${e},encrypt.key-secret=sec0`,
    ];
    for (const spec of specs) {
      const theirs = await runOk("qemu-img", ["info", ...secret, "--image-opts", spec]);
      const ours = await cli(["info", ...secret, "--image-opts", spec]);
      assert.equal(ours.code, 0, ours.stderr);
      assert.equal(imageLine(ours.stdout), imageLine(theirs.stdout), spec);
    }
    const json = `json:{"driver": "blkdebug", "config": "${d.path}/42", "image.driver": "null-co"}`;
    assert.equal(imageLine((await cli(["info", json])).stdout), imageLine((await runOk("qemu-img", ["info", json])).stdout));
  },
});

Deno.test({
  name: "an nbd node is named nbd://host:port or nbd+unix://?socket=PATH as qemu-img names it (iotest 162)",
  ignore: skipUnless("qemu-img", "qemu-nbd"),
  async fn() {
    await using d = await tempDir();
    const sock = `${d.path}/s`;
    const server = new Deno.Command("qemu-nbd", { args: ["-t", "-k", sock, "-f", "raw", "null-co://"], stderr: "null" }).spawn();
    try {
      for (let i = 0; i < 100; i++) {
        if (await Deno.stat(sock).then(() => true, () => false)) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      for (const spec of [`json:{"driver": "nbd", "path": "${sock}"}`, `json:{"driver": "nbd", "path": "${sock}", "export": ""}`]) {
        const theirs = await runOk("qemu-img", ["info", spec]);
        const ours = await cli(["info", spec]);
        assert.equal(imageLine(ours.stdout), imageLine(theirs.stdout), spec);
      }
      const spec = `driver=nbd,server.type=unix,server.path=${sock}`;
      assert.equal(imageLine((await cli(["info", "--image-opts", spec])).stdout), `image: nbd+unix://?socket=${sock}`);
    } finally {
      server.kill();
      await server.status;
    }
  },
});

Deno.test({
  name: "an nbd host that does not resolve fails with qemu-img's address resolution message",
  ignore,
  async fn() {
    const spec = 'json:{"driver": "nbd", "host": "nonexistent.invalid"}';
    const theirs = await run("qemu-img", ["info", spec]);
    const ours = await cli(["info", spec]);
    assert.equal(ours.code, 1);
    assert.match(theirs.stderr, /address resolution failed for nonexistent.invalid:10809: /);
    assert.equal(ours.stderr.replace(/^[^:]*: /, ""), theirs.stderr.replace(/^[^:]*: /, ""));
  },
});

Deno.test({
  name: "info names blkdebug with set-state by json: and finds the backing file through it, but not through quorum (qemu-img's lines)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const base = `${d.path}/t.qcow2.base`;
    const top = `${d.path}/t.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", base, "1M"]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "t.qcow2.base", "-F", "qcow2", top]);
    await Deno.copyFile(top, `${top}.copy`);
    const file = (f: string) => ({ driver: "file", filename: f });
    const specs = [
      { driver: "qcow2", file: { driver: "blkdebug", image: file(top), "set-state": [{ event: "read_aio", new_state: 42 }] } },
      { driver: "qcow2", file: { driver: "quorum", "vote-threshold": 1, children: [file(top), file(`${top}.copy`)] } },
    ];
    const lines = (out: string) => out.split("\n").filter((l) => l.startsWith("image: ") || l.startsWith("backing file: "));
    for (const spec of specs) {
      const name = `json:${JSON.stringify(spec)}`;
      const theirs = await runOk("qemu-img", ["info", name]);
      const ours = await cli(["info", name]);
      assert.equal(ours.code, 0, ours.stderr);
      assert.deepEqual(lines(ours.stdout), lines(theirs.stdout), name);
    }
    // Opening the backing file needs the directory quorum does not have: qemu-io's error.
    const name = `json:${JSON.stringify(specs[1])}`;
    const theirs = await run("qemu-io", ["-c", "read 0 512", name]);
    const ours = await cli(["io", "-c", "read 0 512", name]);
    assert.equal(ours.stderr.replace(/^blkgraph/, "qemu-io"), theirs.stderr);
  },
});
