// The protocol under a new image has creation options of its own, as QEMU's protocol drivers do: ssh takes only the
// size, nbd the size and preallocation=off, rbd its object size, secrets and encryption. qemu-img parses `-o` against
// the format's table plus the protocol's, so an option neither lists is refused ("Invalid parameter 'preallocation'")
// before "Formatting ...", before anything connects; a value the protocol cannot do is refused by the protocol after
// the line. None of these cases needs a server: each fails before qemu-img connects, or when it cannot.
import assert from "node:assert/strict";
import { BlockError, checkCreateOptions } from "../../mod.ts";
import { qemuImg } from "../../cli/qemu-img.ts";
import { run, skipUnless, tempDir } from "../_helpers/qemu.ts";

const SSH = "ssh://127.0.0.1:1/tmp/blkgraph-never-created";
const NBD = "nbd://127.0.0.1:1/";
const RBD = "rbd:blkgraph-no-pool/never-created";

/** [format, -o list, target]; `FILE` is a file in a temporary directory. */
const CASES: [string, string, string][] = [
  ["raw", "preallocation=full", SSH],
  ["raw", "preallocation=off", SSH],
  ["raw", "cluster_size=64k", SSH],
  ["qcow2", "nocow=on", SSH],
  ["qcow2", "foo=1", SSH],
  ["qcow2", "password-secret=x", SSH],
  ["raw", "preallocation=full", RBD],
  ["raw", "nocow=on", RBD],
  ["qcow2", "extent_size_hint=1M", RBD],
  ["raw", "cluster_size=5000", RBD],
  ["raw", "cluster_size=1k", RBD],
  ["raw", "password-secret=x", RBD],
  ["raw", "preallocation=full", NBD],
  ["raw", "preallocation=falloc", NBD],
  ["raw", "preallocation=metadata", NBD],
  ["raw", "preallocation=foo", NBD],
  ["raw", "cluster_size=64k", NBD],
  ["qcow2", "nocow=on", NBD],
  ["raw", "preallocation=metadata", "FILE"],
  ["raw", "preallocation=foo", "FILE"],
  // nbd only opens an existing export; null-co and blkdebug cannot create at all (refused before "Formatting").
  ["raw", "preallocation=off", NBD],
  ["qcow2", "cluster_size=64k", "nbd+unix:///?socket=/nonexistent/blkgraph.sock"],
  ["raw", "preallocation=off", "null-co://"],
  ["qcow2", "cluster_size=64k", "blkdebug::/nonexistent/blkgraph.qcow2"],
];

/** The drop-in's output with standard error merged into standard output, as the iotests capture it. */
async function dropIn(args: string[]): Promise<{ code: number; out: string }> {
  let out = "";
  const code = await qemuImg(args, { stdout: (s) => void (out += s), stderr: (s) => void (out += s) });
  return { code, out };
}

Deno.test({
  name:
    "qemu-img create refuses an option the format and the protocol (ssh, nbd, rbd) do not list, and a mode the protocol cannot do, as qemu-img",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    for (const [fmt, o, target0] of CASES) {
      const target = target0 === "FILE" ? `${d.path}/t.img` : target0;
      const args = ["create", "-f", fmt, "-o", o, target, "1M"];
      const q = await run("sh", ["-c", `qemu-img ${args.map((a) => `'${a}'`).join(" ")} 2>&1`]);
      const r = await dropIn(args);
      assert.deepEqual(r, { code: q.code, out: q.stdout }, `${fmt} -o ${o} ${target0}`);
      assert.equal(r.code, 1, `${fmt} -o ${o} ${target0}`);
    }
  },
});

Deno.test({
  name: "qemu-img create -o help lists the ssh, nbd and rbd protocols' creation options after the format's, as qemu-img",
  ignore: skipUnless("qemu-img"),
  async fn() {
    for (const target of [SSH, NBD, RBD]) {
      for (const fmt of ["raw", "qcow2"]) {
        const q = await run("qemu-img", ["create", "-f", fmt, "-o", "help", target]);
        assert.deepEqual(await dropIn(["create", "-f", fmt, "-o", "help", target]), { code: 0, out: q.stdout }, `${fmt} ${target}`);
      }
    }
  },
});

Deno.test("checkCreateOptions() refuses preallocation on ssh and rbd but takes it on nbd, and takes rbd's object size", () => {
  const refused = (format: string, filename: string, options: Record<string, string>) => {
    try {
      checkCreateOptions(format, filename, options);
    } catch (e) {
      assert.ok(e instanceof BlockError && e.code === "EINVAL");
      return e.qemuMessage;
    }
    return undefined;
  };
  assert.equal(refused("raw", SSH, { preallocation: "full" }), "Invalid parameter 'preallocation'");
  assert.equal(refused("raw", RBD, { preallocation: "off" }), "Invalid parameter 'preallocation'");
  assert.equal(refused("raw", NBD, { preallocation: "off" }), undefined);
  assert.equal(refused("raw", RBD, { cluster_size: "4M", "password-secret": "s" }), undefined);
  assert.equal(refused("raw", NBD, { cluster_size: "4M" }), "Invalid parameter 'cluster_size'");
  // qcow2's own preallocation and cluster_size stay the format's, whatever the protocol.
  assert.equal(refused("qcow2", SSH, { preallocation: "full", cluster_size: "4k" }), undefined);
});
