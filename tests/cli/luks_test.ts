/**
 * The CLI on luks images: `--object secret,...` on every verb (applied
 * before images open, removed when the verb ends), and create / info / io /
 * convert / map / compare / resize / amend output compared with QEMU's
 * tools on the same files.
 */

import assert from "node:assert/strict";
import { hasSecret } from "../../core/secrets.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { qemuImgKeyslots } from "../drivers/luks/_util.ts";
import { cli } from "./_run.ts";

const ignore = skipUnless("qemu-img", "qemu-io");
const S0 = ["--object", "secret,id=sec0,data=hunter0"];
const S1 = ["--object", "secret,id=sec1,data=hunter1"];
const spec = (path: string, secret = "sec0") => `driver=luks,key-secret=${secret},file.filename=${path}`;

async function create(path: string, size = "4M", extra = ""): Promise<void> {
  const r = await cli(["create", "-q", "-f", "luks", ...S0, "-o", `key-secret=sec0,iter-time=10${extra}`, path, size]);
  assert.equal(r.code, 0, r.stderr);
}

Deno.test("create -f luks prints qemu-img's Formatting line, options in qemu-img's order", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  const r = await cli([
    "create",
    "-f",
    "luks",
    ...S0,
    "-o",
    "iter-time=10,hash-alg=sha1,ivgen-alg=essiv,cipher-mode=cbc,cipher-alg=aes-128,key-secret=sec0",
    path,
    "1M",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(
    r.stdout,
    `Formatting '${path}', fmt=luks size=1048576 key-secret=sec0 cipher-alg=aes-128 cipher-mode=cbc ivgen-alg=essiv hash-alg=sha1 iter-time=10\n`,
  );
});

Deno.test("--object secrets live for one verb: the same id works in the next run, and is gone afterwards", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  await create(path);
  for (let i = 0; i < 2; i++) {
    const r = await cli(["io", ...S0, "--image-opts", spec(path), "-c", "write -P 0x5a 0 4k"]);
    assert.equal(r.code, 0, r.stderr);
  }
  assert.equal(hasSecret("sec0"), false);
  const bad = await cli(["info", "--object", "iothread,id=io0", path]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /Invalid object type 'iothread': only 'secret' objects are supported/);
  const dup = await cli(["info", ...S0, ...S0, path]);
  assert.match(dup.stderr, /Duplicate secret id 'sec0'/);
  assert.equal(hasSecret("sec0"), false);
});

Deno.test("io with a wrong passphrase fails to open with QEMU's message and exit code 1", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  await create(path);
  const r = await cli(["io", "--object", "secret,id=sec0,data=wrong", "--image-opts", spec(path), "-c", "read 0 4k"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /Invalid password, cannot unlock any keyslot/);
  const none = await cli(["io", "-c", "read 0 4k", path]);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /Parameter 'key-secret' is required for cipher/);
});

Deno.test("key material and passphrases never appear in traces, info or error output", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  await create(path);
  const outputs = [
    await cli([
      "io",
      ...S0,
      "--image-opts",
      spec(path),
      "--trace",
      "-c",
      "write -P 1 0 4k",
      "-c",
      "flush",
      "-c",
      "read 0 4k",
      "-c",
      "info",
    ]),
    await cli(["info", "--output=json", path]),
    await cli(["io", "--object", "secret,id=sec0,data=hunter0-wrong", "--image-opts", spec(path), "-c", "read 0 4k"]),
  ];
  for (const o of outputs) assert.doesNotMatch(o.stdout + o.stderr, /hunter0/);
  assert.match(outputs[0].stdout, /flush/, "the trace ran");
});

Deno.test({
  name: "info on a luks image prints exactly what qemu-img info prints (human and JSON), without needing the secret",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.luks`;
    await create(path, "4M", ",cipher-alg=aes-128,ivgen-alg=essiv");
    for (const fmt of ["human", "json"]) {
      const ours = await cli(["info", `--output=${fmt}`, path]);
      const theirs = await runOk("qemu-img", ["info", `--output=${fmt}`, path]);
      assert.equal(ours.code, 0, ours.stderr);
      assert.equal(ours.stdout, theirs.stdout);
    }
  },
});

Deno.test({
  name: "io writes on a luks image read back in qemu-io; map and compare agree with qemu-img",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.luks`;
    await create(path);
    const w = await cli(["io", ...S0, "--image-opts", spec(path), "-c", "write -P 0xab 64k 128k", "-c", "write -z 1M 64k"]);
    assert.equal(w.code, 0, w.stderr);
    const q = await runOk("qemu-io", [...S0, "--image-opts", spec(path), "-c", "read -P 0xab 64k 128k", "-c", "read -P 0 1M 64k"]);
    assert.doesNotMatch(q.stdout + q.stderr, /verification failed/);
    const strip = (s: string) => s.replaceAll(/, "compressed": (true|false)/g, "");
    const ours = await cli(["map", "--output=json", ...S0, "--image-opts", spec(path)]);
    const theirs = await runOk("qemu-img", ["map", "--output=json", ...S0, "--image-opts", spec(path)]);
    assert.equal(strip(ours.stdout), theirs.stdout);
    const human = await cli(["map", ...S0, "--image-opts", spec(path)]);
    const qHuman = await run("qemu-img", ["map", ...S0, "--image-opts", spec(path)]);
    assert.equal(human.code, qHuman.code);
    assert.equal(human.stdout, qHuman.stdout);
    assert.match(human.stderr, /File contains external, encrypted or compressed clusters/);
    const raw = `${dir.path}/plain.raw`;
    await runOk("qemu-img", ["convert", ...S0, "--image-opts", spec(path), "-O", "raw", raw]);
    const cmp = await cli(["compare", ...S0, "--image-opts", `driver=raw,file.filename=${raw}`, spec(path)]);
    assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
  },
});

Deno.test({
  name: "convert to and from luks gives what qemu-img convert gives (a luks target gets its zeros written)",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const src = `${dir.path}/src.raw`;
    await runOk("qemu-img", ["create", "-q", "-f", "raw", src, "3M"]);
    await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x44 100k 200k", "-c", "write -P 0x45 2M 4k", src]);
    const ours = `${dir.path}/ours.luks`;
    const r = await cli(["convert", ...S0, "-O", "luks", "-o", "key-secret=sec0,iter-time=10", src, ours]);
    assert.equal(r.code, 0, r.stderr);
    const cmp = await run("qemu-img", ["compare", ...S0, "--image-opts", `driver=raw,file.filename=${src}`, spec(ours)]);
    assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
    const theirs = `${dir.path}/theirs.luks`;
    const q = await qemuImgKeyslots(["convert", ...S0, "-O", "luks", "-o", "key-secret=sec0,iter-time=10", src, theirs]);
    assert.equal(q.code, 0, q.stderr);
    assert.equal((await Deno.stat(ours)).blocks, (await Deno.stat(theirs)).blocks, "same allocation as qemu-img's target");
    const back = `${dir.path}/back.raw`;
    const b = await cli(["convert", ...S0, "--image-opts", spec(ours), "-O", "raw", back]);
    assert.equal(b.code, 0, b.stderr);
    assert.deepEqual(await Deno.readFile(back), await Deno.readFile(src));
  },
});

Deno.test({
  name: "resize of a luks image sets the same file size as qemu-img resize",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const a = `${dir.path}/a.luks`;
    await create(a, "1M");
    const b = `${dir.path}/b.luks`;
    await Deno.copyFile(a, b);
    const r = await cli(["resize", ...S0, "--image-opts", spec(a), "+3M"]);
    assert.equal(r.code, 0, r.stderr);
    await runOk("qemu-img", ["resize", ...S0, "--image-opts", spec(b), "+3M"]);
    assert.equal((await Deno.stat(a)).size, (await Deno.stat(b)).size);
  },
});

Deno.test({
  name: "amend adds a key slot that qemu-io opens; --force is needed to overwrite an active slot",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.luks`;
    await create(path);
    const add = await cli(["amend", ...S0, ...S1, "--image-opts", spec(path), "-o", "state=active,new-secret=sec1,iter-time=10"]);
    assert.equal(add.code, 0, add.stderr);
    const q = await run("qemu-io", [...S1, "--image-opts", spec(path, "sec1"), "-c", "read 0 512"]);
    assert.equal(q.code, 0, q.stderr);
    const over = await cli([
      "amend",
      ...S0,
      ...S1,
      "--image-opts",
      spec(path),
      "-o",
      "state=active,new-secret=sec1,keyslot=0,iter-time=10",
    ]);
    assert.equal(over.code, 1);
    assert.match(over.stderr, /Refusing to overwrite active keyslot 0 - please erase it first/);
    const forced = await cli([
      "amend",
      ...S0,
      ...S1,
      "--image-opts",
      spec(path),
      "--force",
      "-o",
      "state=active,new-secret=sec1,keyslot=0,iter-time=10",
    ]);
    assert.equal(forced.code, 0, forced.stderr);
    const raw = await cli(["amend", "-f", "raw", "-o", "size=1M", path]);
    assert.match(raw.stderr, /Format driver 'raw' does not support option amendment/); // qemu-img's words
  },
});

Deno.test({
  name: "info opens without I/O: a missing or wrong key secret does not stop it (luks and qcow2 encrypt), as qemu-img info",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const luks = `${dir.path}/a.luks`;
    const q2 = `${dir.path}/a.qcow2`;
    await create(luks, "1M");
    await runOk("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      ...S0,
      "-o",
      "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
      q2,
      "1M",
    ]);
    const wrong = ["--object", "secret,id=sec0,data=not-the-key"];
    for (
      const args of [
        ["--image-opts", `driver=luks,key-secret=nosuch,file.filename=${luks}`],
        [...wrong, "--image-opts", spec(luks)],
        ["--image-opts", `driver=qcow2,file.filename=${q2},encrypt.key-secret=nosuch`],
        [...wrong, "--image-opts", `driver=qcow2,file.filename=${q2},encrypt.key-secret=sec0`],
      ]
    ) {
      const q = await run("qemu-img", ["info", ...args]);
      const r = await cli(["info", ...args]);
      const body = (s: string) => s.split("\n").slice(1).join("\n"); // the image: line names the options differently (json:)
      assert.deepEqual([r.code, body(r.stdout), r.stderr], [q.code, body(q.stdout), q.stderr], args.join(" "));
    }
  },
});
