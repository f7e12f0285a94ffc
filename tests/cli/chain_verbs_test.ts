import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuImg } from "../../cli/qemu-img.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

async function ours(args: string[]) {
  let stdout = "";
  let stderr = "";
  const code = await qemuImg(args, { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s) });
  return { code, stdout, stderr };
}

async function img(path: string, size: string, cmds: string[] = [], backing?: string): Promise<string> {
  const b = backing ? ["-b", backing, "-F", "qcow2"] : [];
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", ...b, path, ...(backing ? [] : [size])]);
  if (cmds.length) await runOk("qemu-io", [...cmds.flatMap((c) => ["-c", c]), path]);
  return path;
}

/** What an image reads, whole (through its backing chain), as qemu-img sees it: a SHA-256 of it (cheap to compare and print). */
async function content(path: string, dir: string): Promise<string> {
  const out = `${dir}/content-${crypto.randomUUID()}.raw`;
  await runOk("qemu-img", ["convert", "-O", "raw", path, out]);
  const bytes = await Deno.readFile(out);
  await Deno.remove(out);
  return Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** SHA-256 of a file's bytes. */
async function sha(path: string): Promise<string> {
  const bytes = await Deno.readFile(path);
  return Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** `qemu-img map --output=json` with the directory taken out of the file names. */
async function map(path: string, dir: string): Promise<string> {
  return (await runOk("qemu-img", ["map", "--output=json", path])).stdout.replaceAll(dir, "DIR");
}

/**
 * Which guest ranges an image allocates, and as what (data, zero, from which
 * layer), from qemu-img map: host offsets left out, since where clusters land
 * in the file is allocation order, not meaning.
 */
async function layout(path: string, dir: string): Promise<string[]> {
  const entries = JSON.parse(await map(path, dir)) as Record<string, unknown>[];
  const out: string[] = [];
  let prev: string | undefined;
  let start = 0;
  let end = 0;
  for (const e of entries) {
    const kind = `present=${e.present} zero=${e.zero} data=${e.data} depth=${e.depth}`;
    if (kind !== prev) {
      if (prev) out.push(`${start}+${end - start} ${prev}`);
      prev = kind;
      start = e.start as number;
    }
    end = (e.start as number) + (e.length as number);
  }
  if (prev) out.push(`${start}+${end - start} ${prev}`);
  return out;
}

/** The same chain twice, in `${dir}/q` (for qemu-img) and `${dir}/b` (for us). */
async function twice(dir: string, build: (d: string) => Promise<void>): Promise<[string, string]> {
  for (const sub of ["q", "b"]) {
    await Deno.mkdir(`${dir}/${sub}`);
    await build(`${dir}/${sub}`);
  }
  return [`${dir}/q`, `${dir}/b`];
}

const chain = async (d: string) => {
  await img(`${d}/base.qcow2`, "4M", ["write -P 1 0 1M", "write -P 11 3M 512k"]);
  await img(`${d}/mid.qcow2`, "", ["write -P 2 512k 1M", "write -z 3M 64k"], `${d}/base.qcow2`);
  await img(`${d}/top.qcow2`, "", ["write -P 3 1M 64k", "write -P 33 2M 4k"], `${d}/mid.qcow2`);
};

Deno.test({
  name: "safe rebase onto another image keeps what the image reads and copies what qemu-img copies (iotests 024, 042, 050)",
  ignore: QEMU,
  async fn() {
    await using t = await tempDir();
    const [q, b] = await twice(t.path, async (d) => {
      await chain(d);
      await img(`${d}/other.qcow2`, "4M", ["write -P 7 0 2M"]);
    });
    const before = await content(`${b}/top.qcow2`, t.path);
    const qr = await run("qemu-img", ["rebase", "-b", `${q}/other.qcow2`, "-F", "qcow2", `${q}/top.qcow2`]);
    const br = await ours(["rebase", "-b", `${b}/other.qcow2`, "-F", "qcow2", `${b}/top.qcow2`]);
    assertEquals([br.code, br.stdout, br.stderr], [qr.code, qr.stdout, qr.stderr]);
    assertEquals(await content(`${b}/top.qcow2`, t.path), before);
    assertEquals(await layout(`${b}/top.qcow2`, b), await layout(`${q}/top.qcow2`, q));
  },
});

Deno.test({
  name: "safe rebase onto an image further down the chain and onto none (-b '') keep what the image reads",
  ignore: QEMU,
  async fn() {
    await using t = await tempDir();
    for (const target of ["base", ""]) {
      const sub = `${t.path}/${target || "none"}`;
      await Deno.mkdir(sub);
      const [q, b] = await twice(sub, chain);
      const before = await content(`${b}/top.qcow2`, t.path);
      const args = (d: string) =>
        target ? ["rebase", "-b", `${d}/${target}.qcow2`, "-F", "qcow2", `${d}/top.qcow2`] : ["rebase", "-b", "", `${d}/top.qcow2`];
      const qr = await run("qemu-img", args(q));
      const br = await ours(args(b));
      assertEquals([br.code, br.stderr], [qr.code, qr.stderr], target);
      assertEquals(await content(`${b}/top.qcow2`, t.path), before, target);
      assertEquals(await layout(`${b}/top.qcow2`, b), await layout(`${q}/top.qcow2`, q), target);
    }
  },
});

Deno.test({
  name: "safe rebase refuses a missing -b, and -b without -F before it changes anything",
  ignore: QEMU,
  async fn() {
    await using t = await tempDir();
    await chain(t.path);
    const r = await ours(["rebase", `${t.path}/top.qcow2`]);
    const q = await run("qemu-img", ["rebase", `${t.path}/top.qcow2`]);
    assertEquals([r.code, r.stderr], [q.code, q.stderr.split("\n")[0] + "\n"]);
    const before = await Deno.readFile(`${t.path}/top.qcow2`);
    const noFmt = await ours(["rebase", "-b", `${t.path}/base.qcow2`, `${t.path}/top.qcow2`]);
    assertEquals(noFmt.stderr, `qemu-img: Could not change the backing file to '${t.path}/base.qcow2': backing format must be specified\n`);
    assertEquals(await Deno.readFile(`${t.path}/top.qcow2`), before);
  },
});

Deno.test({
  name: "commit -b BASE commits the image and the layers above BASE into it and leaves them unchanged, as qemu-img (iotests 020, 097)",
  ignore: QEMU,
  async fn() {
    await using t = await tempDir();
    const [q, b] = await twice(t.path, chain);
    const top = await content(`${b}/top.qcow2`, t.path);
    const qr = await run("qemu-img", ["commit", "-b", `${q}/base.qcow2`, `${q}/top.qcow2`]);
    const br = await ours(["commit", "-b", `${b}/base.qcow2`, `${b}/top.qcow2`]);
    assertEquals([br.code, br.stdout, br.stderr], [qr.code, qr.stdout, qr.stderr]);
    assertEquals(await content(`${b}/base.qcow2`, t.path), top);
    for (const f of ["base", "mid", "top"]) assertEquals(await layout(`${b}/${f}.qcow2`, b), await layout(`${q}/${f}.qcow2`, q), f);
    const miss = await ours(["commit", "-b", `${b}/nope.qcow2`, `${b}/top.qcow2`]);
    assertEquals(miss.stderr, `qemu-img: Did not find '${b}/nope.qcow2' in the backing chain of '${b}/top.qcow2'\n`);
  },
});

Deno.test({
  name: "commit (direct backing file) empties the image; the base grows when it is smaller; zero ranges stay zero clusters (iotest 313)",
  ignore: QEMU,
  async fn() {
    await using t = await tempDir();
    const [q, b] = await twice(t.path, async (d) => {
      await img(`${d}/base.qcow2`, "1M", ["write -P 1 0 1M"]);
      await img(`${d}/top.qcow2`, "2M", ["write -z 0 512k", "write -P 2 1536k 64k"]);
      await runOk("qemu-img", ["rebase", "-u", "-b", `${d}/base.qcow2`, "-F", "qcow2", `${d}/top.qcow2`]);
    });
    const top = await content(`${b}/top.qcow2`, t.path);
    const qr = await run("qemu-img", ["commit", `${q}/top.qcow2`]);
    const br = await ours(["commit", `${b}/top.qcow2`]);
    assertEquals([br.code, br.stdout], [qr.code, qr.stdout]);
    assertEquals(await content(`${b}/base.qcow2`, t.path), top);
    for (const f of ["base", "top"]) assertEquals(await layout(`${b}/${f}.qcow2`, b), await layout(`${q}/${f}.qcow2`, q), f);
  },
});

Deno.test({
  name: "commit of blkdebug:CONF:IMG reads the image through the filter, so its rule fails the commit, as qemu-img's (iotest 098)",
  ignore: QEMU,
  async fn() {
    await using t = await tempDir();
    const [q, b] = await twice(t.path, async (d) => {
      await img(`${d}/base.qcow2`, "64M");
      await img(`${d}/top.qcow2`, "", ["write 0 64k"], `${d}/base.qcow2`);
      await Deno.writeTextFile(`${d}/bd.conf`, '[inject-error]\nevent = "read_aio"\n');
    });
    const qr = await run("qemu-img", ["commit", `blkdebug:${q}/bd.conf:${q}/top.qcow2`]);
    const br = await ours(["commit", `blkdebug:${b}/bd.conf:${b}/top.qcow2`]);
    assertEquals([br.code, br.stdout, br.stderr], [qr.code, qr.stdout, qr.stderr]);
    assertEquals(br.stderr, "qemu-img: Block job failed: Input/output error\n");
    assertEquals((await run("qemu-img", ["check", `${b}/base.qcow2`])).code, 0);
  },
});

Deno.test({
  name: "dd copies count blocks of bs bytes after skip blocks into a new image, byte for byte as qemu-img dd (iotests 159, 160, 170)",
  ignore: QEMU,
  async fn() {
    await using t = await tempDir();
    const src = await img(`${t.path}/s.qcow2`, "1M", ["write -P 7 24 512k", "write -P 9 900k 1k"]);
    for (
      const ops of [["bs=512", "skip=1"], ["bs=4k", "skip=3", "count=100"], ["bs=64k"], ["count=3"], ["bs=512", "skip=5000"], [
        "bs=1M",
        "count=1",
      ]]
    ) {
      const q = await run("qemu-img", ["dd", "-f", "qcow2", "-O", "raw", ...ops, `if=${src}`, `of=${t.path}/q.raw`]);
      const r = await ours(["dd", "-f", "qcow2", "-O", "raw", ...ops, `if=${src}`, `of=${t.path}/b.raw`]);
      assertEquals([r.code, r.stderr.replace("b.raw", "q.raw")], [q.code, q.stderr], ops.join(" "));
      assertEquals(await sha(`${t.path}/b.raw`), await sha(`${t.path}/q.raw`), ops.join(" "));
    }
    const q2 = await runOk("qemu-img", ["dd", "-O", "qcow2", "bs=4k", `if=${src}`, `of=${t.path}/q.qcow2`]);
    const r2 = await ours(["dd", "-O", "qcow2", "bs=4k", `if=${src}`, `of=${t.path}/b.qcow2`]);
    assertEquals(r2.code, q2.code);
    assertEquals(await content(`${t.path}/b.qcow2`, t.path), await content(`${t.path}/q.qcow2`, t.path));
    for (const bad of [["bs=0"], ["bs=1kilo"], ["count=x"], ["foo=1"], []]) {
      const q = await run("qemu-img", ["dd", ...bad, ...(bad.length ? [`if=${src}`, `of=${t.path}/x.raw`] : [`if=${src}`])]);
      const r = await ours(["dd", ...bad, ...(bad.length ? [`if=${src}`, `of=${t.path}/x.raw`] : [`if=${src}`])]);
      assertEquals([r.code, r.stderr], [q.code, q.stderr], bad.join(" "));
    }
  },
});

Deno.test({
  name: "convert -B writes zeros where the source reads zeros over backing data, as qemu-img convert does (issue 9.6, iotest 122)",
  ignore: QEMU,
  async fn() {
    await using t = await tempDir();
    const base = await img(`${t.path}/base.qcow2`, "4M", ["write -P 0x11 0 4M"]);
    const top = await img(`${t.path}/top.qcow2`, "", ["write -z 0 1M", "write -P 0x22 2M 64k", "write -P 0 3M 64k"], base);
    for (const how of [["-B", base, "-F", "qcow2"], ["-o", `backing_file=${base},backing_fmt=qcow2`]]) {
      await runOk("qemu-img", ["convert", "-O", "qcow2", ...how, top, `${t.path}/q.qcow2`]);
      const r = await ours(["convert", "-O", "qcow2", ...how, top, `${t.path}/b.qcow2`]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(await content(`${t.path}/b.qcow2`, t.path), await content(top, t.path), how[0]);
      assertEquals(
        await map(`${t.path}/b.qcow2`, t.path),
        (await map(`${t.path}/q.qcow2`, t.path)).replaceAll("q.qcow2", "b.qcow2"),
        how[0],
      );
    }
  },
});

Deno.test({
  name:
    "commit writes into the base through the graph the image's json: backing name describes (a blkdebug rule there fails it), as qemu-img (iotest 020)",
  ignore: QEMU,
  async fn() {
    await using t = await tempDir();
    const [q, b] = await twice(t.path, async (d) => {
      await img(`${d}/base.qcow2`, "1M");
      const json =
        `json:{'driver': 'qcow2', 'file': { 'driver': 'blkdebug', 'inject-error': [{ 'event': 'write_aio', 'errno': 28, 'once': true }], 'image': { 'driver': 'file', 'filename': '${d}/base.qcow2' }}}`;
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-u", "-b", json, "-F", "qcow2", `${d}/top.qcow2`, "1M"]);
      await runOk("qemu-io", ["-c", "write 0 64k", `${d}/top.qcow2`]);
    });
    const qr = await run("qemu-img", ["commit", `${q}/top.qcow2`]);
    const br = await ours(["commit", `${b}/top.qcow2`]);
    assertEquals([br.code, br.stdout, br.stderr], [qr.code, qr.stdout, qr.stderr]);
    assertEquals(br.stderr, "qemu-img: Block job failed: No space left on device\n");
  },
});

Deno.test({
  name: "commit --image-opts keeps the options given for the backing file (an encrypted base's key-secret), as qemu-img (iotest 198)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const objects = ["--object", "secret,id=sec0,data=base-key", "--object", "secret,id=sec1,data=top-key"];
    const enc = (secret: string) => `encrypt.format=luks,encrypt.key-secret=${secret},encrypt.iter-time=10`;
    const spec = (who: string) =>
      `driver=qcow2,file.filename=${d.path}/${who}.qcow2,encrypt.key-secret=sec1,` +
      `backing.driver=qcow2,backing.file.filename=${d.path}/${who}.base,backing.encrypt.key-secret=sec0`;
    const results = [];
    for (const who of ["ours", "theirs"]) {
      await runOk("qemu-img", ["create", "-q", ...objects, "-f", "qcow2", "-o", enc("sec0"), `${d.path}/${who}.base`, "4M"]);
      await runOk("qemu-img", [
        "create",
        "-q",
        ...objects,
        "-f",
        "qcow2",
        "-o",
        enc("sec1"),
        "-b",
        `${who}.base`,
        "-F",
        "qcow2",
        `${d.path}/${who}.qcow2`,
      ]);
      await runOk("qemu-io", [...objects, "-c", "write -P 9 64k 1M", "--image-opts", spec(who)]);
      const args = ["commit", ...objects, "--image-opts", spec(who)];
      const r = who === "ours" ? await ours(args) : await run("qemu-img", args);
      const base = `driver=qcow2,file.filename=${d.path}/${who}.base,encrypt.key-secret=sec0`;
      const read = await run("qemu-io", [...objects, "-c", "read -P 9 64k 1M", "-c", "read -P 0 0 64k", "--image-opts", base]);
      const map = await runOk("qemu-io", [...objects, "-c", "map", "--image-opts", spec(who)]);
      results.push([r.code, r.stdout, r.stderr, read.stdout.includes("Pattern verification failed"), map.stdout]);
    }
    assertEquals(results[0], results[1]);
    assertEquals(results[0].slice(0, 4), [0, "Image committed.\n", "", false]);
  },
});
