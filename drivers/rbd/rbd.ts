/**
 * The `rbd` protocol driver: images on a Ceph cluster through Ceph's own
 * client library (librbd over librados, bound with Deno's FFI), as QEMU's
 * `block/rbd.c`. Needs `--allow-ffi` and Debian's `librbd1`.
 *
 * Options (QEMU's names): `pool`, `image` (required), `namespace`,
 * `snapshot` (opens read-only), `conf` (Ceph config file; default Ceph's
 * search: `$CEPH_CONF`, `/etc/ceph/ceph.conf`), `user` (client name without
 * `client.`), `key-secret` (id of a secret object holding the key),
 * `auth-client-required` (`cephx`/`none` list), `server` (list of
 * `{host, port}` monitors), or QEMU's filename form
 * `rbd:pool/[namespace/]image[@snap][:conf=FILE][:id=USER][:key=value…]`
 * where any other key is a Ceph option (`client_mount_timeout=5`,
 * `rbd_cache_policy=writeback`, …).
 *
 * I/O is asynchronous (`rbd_aio_*`; a request on its own completes
 * through librbd's callback, requests in flight together through a
 * socket the event loop polls (an eventfd a worker reads without the net
 * permission) drained in batches; `x-completion=callback|eventfd|socket`
 * forces one way, see `_aio.ts`); every call that can wait for the cluster runs on a worker
 * thread, so an unreachable monitor, a slow OSD or a dead client's
 * exclusive lock never stops the event loop. As in QEMU: writes past the end
 * grow the image, `cache.direct` (cache=none) sets `rbd_cache=false`, a
 * flush is `rbd_aio_flush` (librbd's cache acknowledges writes before the
 * OSDs have them: the flush is the durability point, and FUA is a flush),
 * block status comes from the fast-diff map, and RBD snapshots are the
 * node's internal snapshots (`info`, `snapshot -l/-c/-d/-a`).
 *
 * @example
 * ```ts
 * import { parseRbdFilename } from "@blkgraph/blkgraph/drivers/rbd";
 * // open("rbd:rbd/vm1:conf=/etc/ceph/ceph.conf", { format: "raw" }) needs a cluster;
 * // the filename form alone:
 * const o = parseRbdFilename("rbd:rbd/vm1@before-upgrade:id=admin:client_mount_timeout=5");
 * console.log(o.image, o.snapshot, o.user); // vm1 before-upgrade admin
 * ```
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { parseSize } from "../../core/options.ts";
import { registerDriver } from "../../core/registry.ts";
import type { BlockDriver, DriverInstance } from "../../core/node.ts";
import { connect, RBD_OPTIONS, readRbdOptions } from "./_connect.ts";
import { parseRbdFilename } from "./_filename.ts";
import { RbdInstance } from "./_image.ts";
import { cstr, librbdError, loadLibrbd, rbdError } from "./_librbd.ts";

export { escapeRbd, parseRbdFilename, type RbdLocation } from "./_filename.ts";

/**
 * Creates an RBD image of `size` bytes (QEMU rounds it up to 512; an RBD
 * image can have any size, so the size asked for is kept);
 * `options` are the driver's options or a parsed `rbd:` filename. An
 * existing image is EEXIST, a missing pool ENOENT. `cluster_size` (the
 * object size, a power of two ≥ 4 KiB) picks the object order.
 *
 * @example
 * ```ts
 * import { createRbdImage, removeRbdImage } from "@blkgraph/blkgraph/drivers/rbd";
 * const conf = Deno.env.get("BLKGRAPH_CEPH_CONF"); // a cluster: tests/_helpers/ceph.sh start DIR
 * if (conf) {
 *   const image = { pool: "rbd", image: `doc-${crypto.randomUUID()}`, conf };
 *   await createRbdImage(image, 1 << 20, 1 << 22);
 *   await removeRbdImage(image);
 * }
 * ```
 */
export async function createRbdImage(options: Record<string, unknown>, size: number, objectSize?: number): Promise<void> {
  const lib = loadLibrbd();
  if (!lib) throw librbdError();
  const o = readRbdOptions(options);
  if (o.snapshot) {
    throw new BlockError(
      "EINVAL",
      `Cannot create RBD image '${o.pool}/${o.image}@${o.snapshot}': can't use a snapshot name for image creation`,
    );
  }
  const order = objectSize === undefined ? 0 : checkObjectSize(objectSize);
  const conn = await connect(lib, o, false);
  try {
    const orderBuf = new Int32Array([order]);
    const r = await lib.rbd_create(conn.ioctx, cstr(o.image), size, new Uint8Array(orderBuf.buffer));
    if (r === -17) throw new BlockError("EEXIST", `Cannot create RBD image '${o.pool}/${o.image}': an image of that name exists`);
    if (r < 0) throw rbdError(r, `Cannot create RBD image '${o.pool}/${o.image}'`);
  } finally {
    await conn.close();
  }
}

/** The object order of an object size: a power of two of at least 4 KiB, checked in QEMU's order and words. */
function checkObjectSize(objectSize: number | undefined): number {
  const order = objectSize === undefined ? NaN : Math.log2(objectSize);
  const bad = (qemuMessage: string) =>
    new BlockError(
      "EINVAL",
      `Invalid cluster_size ${objectSize} for an RBD image: the object size must be a power of two of at least 4096`,
      {
        qemuMessage,
      },
    );
  if (objectSize !== 0 && !Number.isInteger(order)) throw bad("obj size needs to be power of 2");
  if (!(order >= 12)) throw bad("obj size too small");
  return order;
}

/**
 * Removes an RBD image (it must have no snapshots: Ceph refuses with
 * EBUSY). Tests and examples clean up with it.
 *
 * @example
 * ```ts
 * import { removeRbdImage } from "@blkgraph/blkgraph/drivers/rbd";
 * const conf = Deno.env.get("BLKGRAPH_CEPH_CONF");
 * if (conf) await removeRbdImage({ filename: `rbd:rbd/no-such-image:conf=${conf}` }).catch((e) => console.log(e.code)); // ENOENT
 * ```
 */
export async function removeRbdImage(options: Record<string, unknown>): Promise<void> {
  const lib = loadLibrbd();
  if (!lib) throw librbdError();
  const o = readRbdOptions(options);
  const conn = await connect(lib, o, false);
  try {
    const r = await lib.rbd_remove(conn.ioctx, cstr(o.image));
    if (r === -2) throw new BlockError("ENOENT", `Cannot remove RBD image '${o.pool}/${o.image}': no such image`);
    if (r < 0) throw rbdError(r, `Cannot remove RBD image '${o.pool}/${o.image}'`);
  } finally {
    await conn.close();
  }
}

/** The `rbd` protocol driver. */
export const rbdDriver: BlockDriver = {
  name: "rbd",
  kind: "protocol",
  protocolPrefix: "rbd",
  options: RBD_OPTIONS,
  parseFilename: (filename) => ({ ...parseRbdFilename(filename) }),
  // QEMU's qemu_rbd_create_opts. cluster_size (a format's own, qcow2's, stays the format's) is the object size.
  createOptions: [
    { name: "cluster_size", type: "size", help: "RBD object size" },
    { name: "encrypt.cipher-alg", type: "str", help: "Name of encryption cipher algorithm (allowed values: aes-128, aes-256)" },
    { name: "encrypt.format", type: "str", help: "Encrypt the image, format choices: 'luks', 'luks2'" },
    { name: "encrypt.key-secret", type: "str", help: "ID of secret providing LUKS passphrase" },
    { name: "password-secret", type: "str", help: "ID of secret providing the password" },
    { name: "size", type: "size", help: "Virtual disk size" },
  ],
  checkCreate(ctx): void {
    const enc = Object.keys(ctx.options).find((k) => k.startsWith("encrypt."));
    if (enc !== undefined) throw new BlockError("ENOTSUP", `Invalid option '${enc}' of driver 'rbd': RBD encryption is not supported`);
    const objectSize = ctx.options.cluster_size;
    if (objectSize !== undefined) checkObjectSize(parseSize(objectSize));
  },
  createFile: (options, size) => {
    const { "cluster-size": objectSize, ...rest } = options;
    return createRbdImage(rest, size, objectSize === undefined ? undefined : parseSize(objectSize));
  },
  async open(ctx): Promise<DriverInstance> {
    const lib = loadLibrbd();
    if (!lib) throw librbdError();
    const o = readRbdOptions(ctx.options);
    const conn = await connect(lib, o, !o.direct);
    try {
      return await RbdInstance.open(lib, conn, ctx.node, o, ctx.readOnly);
    } catch (e) {
      await conn.close();
      throw e;
    }
  },
};

registerDriver(rbdDriver);
