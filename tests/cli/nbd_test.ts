/**
 * `blkgraph nbd` as a command: qemu-nbd's lifetime rules, flags and
 * messages, compared with qemu-nbd where it is the reference.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { hasTool, run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { blkgraphNbd, normalise, qemuNbd, sockPath } from "../drivers/nbd/_helpers.ts";
import { open } from "../../mod.ts";

const QEMU = skipUnless("qemu-img", "qemu-io", "qemu-nbd");
const CLI = new URL("../../cli/main.ts", import.meta.url).pathname;

async function raw(dir: string, name = "d.raw", size = "4M"): Promise<string> {
  const img = `${dir}/${name}`;
  await runOk("qemu-img", ["create", "-q", "-f", "raw", img, size]);
  return img;
}

Deno.test({
  name: "blkgraph nbd: without -t it exits after the last client leaves, writing and removing --pid-file",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-cli-");
    const img = await raw(dir.path);
    const pid = `${dir.path}/pid`;
    const s = await blkgraphNbd(sockPath(dir.path), ["-f", "raw", "--pid-file", pid], img);
    assertEquals(Number((await Deno.readTextFile(pid)).trim()), s.pid);
    await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x61 0 64k", s.uri]);
    const st = await s.status;
    assertEquals(st.code, 0, await s.stderr());
    ok(!(await Deno.stat(pid).then(() => true, () => false)), "pid file left behind");
    const back = await runOk("qemu-io", ["-f", "raw", "-c", "read -P 0x61 0 64k", img]);
    ok(back.stdout.includes("read 65536/65536"));
  },
});

Deno.test({
  name: "blkgraph nbd: -t keeps serving, and SIGTERM stops it cleanly with every completed write on disk",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-cli-");
    const img = await raw(dir.path);
    const s = await blkgraphNbd(sockPath(dir.path), ["-f", "raw", "-t"], img);
    await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x62 1M 64k", s.uri]);
    await runOk("qemu-io", ["-f", "raw", "-c", "read -P 0x62 1M 64k", s.uri]);
    Deno.kill(s.pid, "SIGTERM");
    assertEquals((await s.status).code, 0);
    ok((await runOk("qemu-io", ["-f", "raw", "-c", "read -P 0x62 1M 64k", img])).stdout.includes("read 65536/65536"));
  },
});

Deno.test({
  name: "blkgraph nbd: -B NAME fails as qemu-nbd does for a bitmap the image does not have",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-cli-");
    const img = `${dir.path}/d.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", img, "1M"]);
    const ours = await run(Deno.execPath(), ["run", "-A", CLI, "nbd", "-B", "b0", "-k", `${dir.path}/s.sock`, img]);
    const theirs = await run("qemu-nbd", ["-B", "b0", "-k", `${dir.path}/q.sock`, img]);
    assertEquals(ours.code, 1);
    assertEquals(theirs.code, 1);
    assertEquals(ours.stderr.replace(/^blkgraph: /, ""), theirs.stderr.replace(/^qemu-nbd: /, ""));
  },
});

Deno.test({
  name: "blkgraph nbd: -x, -D, -r, -e and -o show up to nbdinfo and qemu-io as they do with qemu-nbd",
  ignore: QEMU || skipUnless("nbdinfo"),
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-cli-");
    const img = await raw(dir.path);
    await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x63 1M 64k", img]);
    const args = ["-f", "raw", "-t", "-r", "-x", "disk0", "-D", "a test disk", "-e", "3", "-o", "524288"];
    const outs: string[][] = [];
    for (const start of [blkgraphNbd, qemuNbd]) {
      const s = await start(sockPath(dir.path), args, img, "disk0");
      try {
        const info = await runOk("nbdinfo", ["--json", s.uri]);
        const list = await runOk("nbdinfo", ["--list", `nbd+unix://?socket=${s.sock}`]);
        const io = await run("qemu-io", ["-r", "-f", "raw", "-c", "read -P 0x63 512k 64k", "-c", "write 0 512", s.uri]);
        outs.push([info.stdout, list.stdout, io.stdout.replace(/ \d+ ops; .*$/gm, "") + io.stderr].map((t) => normalise(t, s.sock)));
      } finally {
        await s.stop();
      }
    }
    assertEquals(outs[0], outs[1]);
    ok(outs[0][1].includes("a test disk"));
  },
});

Deno.test({
  name: "blkgraph nbd: --discard=unmap --detect-zeroes=unmap turns written zeros into holes as qemu-nbd does",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-cli-");
    const maps: string[] = [];
    for (const start of [blkgraphNbd, qemuNbd]) {
      const img = await raw(dir.path, `${start.name}.raw`);
      await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x64 0 1M", img]);
      const s = await start(sockPath(dir.path), ["-f", "raw", "-t", "--discard=unmap", "--detect-zeroes=unmap"], img);
      try {
        await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0 64k 128k", "-c", "discard 512k 64k", s.uri]);
        maps.push((await runOk("qemu-img", ["map", "--output=json", "-f", "raw", s.uri])).stdout);
      } finally {
        await s.stop();
      }
    }
    assertEquals(maps[0], maps[1]);
    ok(maps[0].includes('"zero": true'));
  },
});

Deno.test({
  name: "blkgraph nbd: --fork returns once the server listens and leaves it running",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-cli-");
    const img = await raw(dir.path);
    const sock = sockPath(dir.path);
    const pid = `${dir.path}/pid`;
    const r = await run(Deno.execPath(), ["run", "-A", CLI, "nbd", "--fork", "-t", "-f", "raw", "-k", sock, "--pid-file", pid, img]);
    assertEquals(r.code, 0, r.stderr);
    const p = Number((await Deno.readTextFile(pid)).trim());
    try {
      ok((await runOk("qemu-img", ["info", `nbd+unix:///?socket=${sock}`])).stdout.includes("virtual size: 4 MiB"));
    } finally {
      Deno.kill(p, "SIGTERM");
    }
    for (let i = 0; i < 300 && (await Deno.stat(pid).then(() => true, () => false)); i++) await new Promise((r) => setTimeout(r, 20));
  },
});

Deno.test({
  name:
    "blkgraph nbd: --tls-creds serves qemu-io over TLS with client certificates and refuses plain clients; the nbd driver speaks TLS to qemu-nbd",
  ignore: QEMU || !hasTool("openssl"),
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-cli-");
    const d = dir.path;
    await makeCerts(d);
    const img = await raw(d);
    const sock = sockPath(d);
    const s = await blkgraphNbd(sock, [
      "-f",
      "raw",
      "-t",
      "--object",
      `tls-creds-x509,id=tls0,dir=${d}/server,endpoint=server`,
      "--tls-creds",
      "tls0",
    ], img);
    try {
      const obj = `tls-creds-x509,id=tls0,dir=${d}/client,endpoint=client`;
      const w = await run("qemu-io", [
        "--object",
        obj,
        "--image-opts",
        "-c",
        "write -P 0x65 0 4k",
        "-c",
        "read -P 0x65 0 4k",
        `driver=nbd,server.type=unix,server.path=${sock},tls-creds=tls0,tls-hostname=localhost`,
      ]);
      assertEquals(w.code, 0, w.stderr);
      ok(w.stdout.includes("read 4096/4096"));
      const plain = await run("qemu-img", ["info", s.uri]);
      ok(plain.code !== 0 && /TLS/i.test(plain.stderr), plain.stderr);
    } finally {
      await s.stop();
    }
    // blkgraph's client over TLS against qemu-nbd, which checks the client certificate (verify-peer defaults to on).
    const q = await qemuNbd(sockPath(d, "q"), [
      "-f",
      "raw",
      "-t",
      "--object",
      `tls-creds-x509,id=t,dir=${d}/server,endpoint=server`,
      "--tls-creds",
      "t",
    ], img);
    try {
      const { defineTlsCreds } = await import("../../drivers/nbd/mod.ts");
      defineTlsCreds("tls-client-test", { dir: `${d}/client`, endpoint: "client" });
      const node = await open({
        driver: "nbd",
        server: { type: "unix", path: q.sock },
        "tls-creds": "tls-client-test",
        "tls-hostname": "localhost",
      });
      const b = new Uint8Array(4096);
      await node.pread(0, b);
      assertEquals(b[4095], 0x65);
      await node.close();
    } finally {
      await q.stop();
    }
  },
});

/** A CA, a server certificate for localhost and a client certificate, laid out as QEMU's tls-creds-x509 dirs. */
async function makeCerts(d: string): Promise<void> {
  await Deno.mkdir(`${d}/server`);
  await Deno.mkdir(`${d}/client`);
  const ssl = (args: string[]) => runOk("openssl", args);
  await ssl([
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    `${d}/ca-key.pem`,
    "-out",
    `${d}/ca-cert.pem`,
    "-days",
    "2",
    "-subj",
    "/CN=blkgraph test CA",
  ]);
  for (
    const [who, ext] of [["server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"], [
      "client",
      "extendedKeyUsage=clientAuth",
    ]]
  ) {
    await Deno.writeTextFile(`${d}/${who}.ext`, `basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n${ext}\n`);
    await ssl([
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      `${d}/${who}/${who}-key.pem`,
      "-out",
      `${d}/${who}.csr`,
      "-subj",
      `/CN=${who === "server" ? "localhost" : "client"}`,
    ]);
    await ssl([
      "x509",
      "-req",
      "-in",
      `${d}/${who}.csr`,
      "-CA",
      `${d}/ca-cert.pem`,
      "-CAkey",
      `${d}/ca-key.pem`,
      "-CAcreateserial",
      "-out",
      `${d}/${who}/${who}-cert.pem`,
      "-days",
      "2",
      "-extfile",
      `${d}/${who}.ext`,
    ]);
    await Deno.copyFile(`${d}/ca-cert.pem`, `${d}/${who}/ca-cert.pem`);
  }
}

Deno.test({
  name: "blkgraph nbd: --image-opts exports a graph with a filter (raw over blkdebug over file)",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-cli-");
    const img = await raw(dir.path);
    await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x66 64k 64k", img]);
    const spec = `driver=raw,file.driver=blkdebug,file.image.driver=file,file.image.filename=${img}`;
    const s = await blkgraphNbd(sockPath(dir.path), ["-t", "--image-opts"], spec);
    try {
      const r = await runOk("qemu-io", ["-f", "raw", "-c", "read -P 0x66 64k 64k", "-c", "write -P 0x67 0 4k", s.uri]);
      ok(r.stdout.includes("read 65536/65536"));
    } finally {
      await s.stop();
    }
    ok((await runOk("qemu-io", ["-f", "raw", "-c", "read -P 0x67 0 4k", img])).stdout.includes("read 4096/4096"));
  },
});
