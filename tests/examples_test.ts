import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { cephConf, hasCeph } from "./_helpers/ceph.ts";

const EXAMPLES = [
  "create_write_image.ts",
  "read_qemu_image.ts",
  "filter_chain_trace_error.ts",
  "throttled_copy_progress.ts",
  "convert_raw_to_compressed.ts",
  "nbd_serve_and_read.ts",
  "trace_requests_chrome.ts",
  "rbd_import.ts",
  "luks_create_and_read.ts",
];

for (const name of EXAMPLES) {
  Deno.test(`examples/${name} runs to completion`, async () => {
    const path = new URL(`../examples/${name}`, import.meta.url).pathname;
    // The rbd example runs against the test cluster where Ceph is installed, and says how to start one otherwise.
    const env: Record<string, string> = name.startsWith("rbd_") && hasCeph() ? { BLKGRAPH_CEPH_CONF: await cephConf() } : {};
    const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", path], env, stdout: "piped", stderr: "piped" }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 0, stderr);
    ok(new TextDecoder().decode(out.stdout).length > 0);
  });
}
