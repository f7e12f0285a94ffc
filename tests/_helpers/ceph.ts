/**
 * A Ceph cluster for the rbd tests. `BLKGRAPH_CEPH_CONF` names a running
 * cluster to use; otherwise the first test that asks starts a one-node
 * cluster with `ceph.sh` in a directory named for this test process, and a
 * watcher stops it when the process exits, so nothing stays running after
 * the suite (test modules share one process under `deno test --parallel`,
 * so they share the cluster too). Tests skip with a visible `SKIP:` line
 * when Ceph or librbd is absent.
 *
 * @module
 */

import { loadLibrbd } from "../../drivers/rbd/_librbd.ts";
import { hasTool, run, runOk } from "./qemu.ts";

const SCRIPT = new URL("./ceph.sh", import.meta.url).pathname;
let available: boolean | undefined;
let starting: Promise<string> | undefined;

/** Whether a cluster can be used or started here (Ceph's daemons and tools, librbd, FFI). */
export function hasCeph(): boolean {
  if (available !== undefined) return available;
  const external = Deno.env.get("BLKGRAPH_CEPH_CONF");
  const tools = external ? ["rbd", "rados"] : ["ceph-mon", "ceph-osd", "ceph-authtool", "monmaptool", "ceph", "rados", "rbd"];
  available = tools.every(hasTool);
  if (available && !loadLibrbd()) {
    console.warn("SKIP: librbd.so.1 cannot be loaded; rbd tests are skipped (CI installs ceph-common)");
    available = false;
  }
  return available;
}

/** `ignore` value for Deno.test: true (skip) without Ceph. */
export function skipUnlessCeph(): boolean {
  return !hasCeph();
}

/** The cluster's config file, starting the cluster on first use. */
export function cephConf(): Promise<string> {
  const external = Deno.env.get("BLKGRAPH_CEPH_CONF");
  if (external) return Promise.resolve(external);
  starting ??= (async () => {
    const dir = `${Deno.env.get("TMPDIR") ?? "/tmp"}/blkgraph-ceph-${Deno.pid}`;
    const r = await run("bash", [SCRIPT, "start", dir, "--owner", String(Deno.pid)]);
    if (r.code !== 0) throw new Error(`ceph.sh start failed (${r.code}):\n${r.stderr}`);
    return r.stdout.trim();
  })();
  return starting;
}

let seq = 0;

/** A unique image name (one image per test: a dead client's lock never gets in the way). */
export function imageName(prefix = "t"): string {
  return `${prefix}-${Deno.pid}-${++seq}-${crypto.randomUUID().slice(0, 8)}`;
}

/** `rbd:pool/image:conf=…` for an image on the test cluster. */
export function rbdFilename(conf: string, image: string, extra = ""): string {
  return `rbd:rbd/${image}:conf=${conf}${extra}`;
}

/** Creates an image with the `rbd` CLI (the reference tool). */
export async function rbdCreate(conf: string, image: string, size: string): Promise<void> {
  await runOk("rbd", ["-c", conf, "create", `rbd/${image}`, "--size", size]);
}

/** The image's bytes as `rbd export` writes them. */
export async function rbdExport(conf: string, image: string, dir: string): Promise<Uint8Array> {
  const path = `${dir}/${image}.export`;
  await runOk("rbd", ["-c", conf, "export", `rbd/${image}`, path]);
  try {
    return await Deno.readFile(path);
  } finally {
    await Deno.remove(path).catch(() => {});
  }
}

/** `rbd info --format json` of an image. */
export async function rbdInfo(conf: string, image: string): Promise<Record<string, unknown>> {
  return JSON.parse((await runOk("rbd", ["-c", conf, "info", "--format", "json", `rbd/${image}`])).stdout);
}
