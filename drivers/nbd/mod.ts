/**
 * NBD for blkgraph: {@linkcode serveNbd} exports a node to NBD clients
 * (qemu, nbdcopy, nbdfuse, ...), and the `nbd` protocol driver opens an
 * NBD export as a node (`open("nbd+unix:///?socket=/run/disk.sock")`).
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * import { serveNbd } from "@blkgraph/blkgraph/drivers/nbd";
 * const disk = await open({ driver: "memory", size: 1 << 20 });
 * const server = await serveNbd(disk, { hostname: "127.0.0.1", port: 0, closeNode: true });
 * const remote = await open(server.uri);
 * console.log(remote.length); // 1048576
 * await remote.close();
 * await server.close();
 * ```
 *
 * @module
 */

export { nbdDriver, parseNbdFilename } from "./client.ts";
export { type NbdAddress, type NbdServeOptions, type NbdServer, type NbdServerStats, serveNbd } from "./server.ts";
export type { MetaContextProvider, MetaExtent } from "./_meta.ts";
export { defineTlsCreds, hasTlsCreds, type TlsCredsOptions } from "./_tls.ts";
