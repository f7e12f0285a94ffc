// An NBD server that is not there: the drop-in qemu-io says so in QEMU's words ("Failed to connect to
// '127.0.0.1:1': Connection refused"), for TCP and Unix sockets alike.
import assert from "node:assert/strict";
import { qemuIo } from "../../cli/qemu-io.ts";
import { run, skipUnless, tempDir } from "../_helpers/qemu.ts";

Deno.test({
  name: "qemu-io on an NBD server nobody listens on fails to open it in qemu-io's words",
  ignore: skipUnless("qemu-io"),
  async fn() {
    await using d = await tempDir();
    for (const uri of ["nbd://127.0.0.1:1/", `nbd+unix:///?socket=${d.path}/none.sock`]) {
      let out = "";
      const code = await qemuIo(["-c", "read 0 1", uri], { stdout: (s) => void (out += s), stderr: (s) => void (out += s) });
      const q = await run("sh", ["-c", `qemu-io -c 'read 0 1' '${uri}' 2>&1`]);
      assert.deepEqual({ code, out }, { code: q.code, out: q.stdout }, uri);
    }
  },
});
