/** The NBD tests' server helper waits for a socket that listens, not only for its file. */

import { hasTool, tempDir } from "../../_helpers/qemu.ts";
import { sockPath, startServer } from "./_helpers.ts";

// Binds, waits, then listens: between the two a client is refused, as with qemu-nbd under load.
const SLOW_SERVER = `
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
time.sleep(0.5)
s.listen(1)
c, _ = s.accept()
c.close()
`;

Deno.test({
  name: "startServer() returns once the socket listens, not when its file appears",
  ignore: !hasTool("python3"),
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-helper-");
    const sock = sockPath(dir.path);
    const s = await startServer("python3", ["-c", SLOW_SERVER, sock], sock);
    try {
      const conn = await Deno.connect({ transport: "unix", path: sock });
      conn.close();
    } finally {
      await s.stop();
    }
  },
});
