// Every examples/*.ts runs to completion and prints what it is there to show:
// each line pattern below must match a line of its output, in order. The
// examples are found on disk, so a new one without an entry here fails.
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { cephConf, hasCeph } from "./_helpers/ceph.ts";
import { hasTool } from "./_helpers/qemu.ts";

const DIR = new URL("../examples/", import.meta.url);

/** What each example must print (in this order; other lines may come between). */
const EXPECT: Record<string, () => (string | RegExp)[]> = {
  "convert_raw_to_compressed.ts": () => [/^copy identical: true; \d+ clusters written$/, /^raw 4194304 bytes -> qcow2 \d{1,6} bytes$/],
  "create_write_image.ts":
    () => ["read back 0xcd .. 0xcd", /^format qcow2, virtual size 67108864, allocated \d+ bytes$/, '  "virtual-size": 67108864,'],
  "filter_chain_trace_error.ts": () => ["write + flush failed as injected: EIO (Input/output error)", /^events: cluster_alloc .*write_aio/],
  "incremental_backup_nbd.ts": () => [/^copied \d+ of 16777216 bytes$/, "backup equals the source: true"],
  "luks_create_and_read.ts": () => [
    /^cipher aes-256-xts, payload at byte \d+$/,
    /^on disk: (?!61747461636b206174206461776e)[0-9a-f]{28}$/,
    "read back: attack at dawn",
    /^wrong passphrase: EACCES /,
  ],
  "nbd_serve_and_read.ts": () => [
    /^serving nbd\+unix:\/\/\/disk\?socket=/,
    "read back 65536 bytes at 1 MiB: all 0x5a = true",
    "  1048576+65536: data",
    "image now starts with: written over NBD",
  ],
  "rbd_import.ts": () =>
    hasCeph()
      ? [/^copied \d+ of 8388608 bytes into rbd:rbd\//, "snapshots: imported", "read back: hello from qcow2"]
      : [/^No Ceph cluster: /],
  "read_qemu_image.ts": () =>
    hasTool("qemu-img")
      ? ["offset 0: 0x11", "offset 65536: 0x22", "offset 131072: 0x00"]
      : ["qemu-img is not installed; skipping this example"],
  "snapshot_revert.ts": () => ["snapshots: 1:before", "snapshot reads 0x11", "after revert: 0x11", "check: 0 corruptions, 0 leaks"],
  "throttled_copy_progress.ts":
    () => [/^ +\(12\.50\/100%\) after \d+ ms$/, /^ +\(100\.00\/100%\) after \d+ ms$/, /^copied 2097152 bytes in /],
  "trace_requests_chrome.ts":
    () => [/^qcow2 #block\d+ +\d+ spans$/, /^BLKDBG events: cluster_alloc .*write_aio/, /^l2 +at \d+ \(65536 bytes\)$/],
};

const examples = [...Deno.readDirSync(DIR)].filter((e) => e.isFile && e.name.endsWith(".ts")).map((e) => e.name).sort();

Deno.test("every example in examples/ has its expected output listed here", () => {
  assertEquals(examples.filter((n) => !(n in EXPECT)), []);
  assertEquals(Object.keys(EXPECT).filter((n) => !examples.includes(n)), []);
});

for (const name of examples.filter((n) => n in EXPECT)) {
  Deno.test(`examples/${name} runs to completion and prints what it shows`, async () => {
    const path = new URL(name, DIR).pathname;
    // The rbd example runs against the test cluster where Ceph is installed, and says how to start one otherwise.
    const env: Record<string, string> = name.startsWith("rbd_") && hasCeph() ? { BLKGRAPH_CEPH_CONF: await cephConf() } : {};
    const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", path], env, stdout: "piped", stderr: "piped" }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 0, stderr);
    const lines = new TextDecoder().decode(out.stdout).split("\n");
    let at = 0;
    for (const want of EXPECT[name]()) {
      const i = lines.findIndex((l, k) => k >= at && (typeof want === "string" ? l === want : want.test(l)));
      ok(i >= 0, `examples/${name}: no line matching ${want} (after line ${at + 1}) in:\n${lines.join("\n")}`);
      at = i + 1;
    }
  });
}
