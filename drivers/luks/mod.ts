/**
 * The `luks` format driver: LUKS1 images as QEMU creates and reads them
 * (`qemu-img create -f luks`), compatible with cryptsetup's LUKS1. Open with
 * `key-secret` naming a secret defined with `defineSecret` or
 * `--object secret,...`.
 *
 * @example
 * ```ts
 * import { createImage, defineSecret, open, removeSecret } from "@blkgraph/blkgraph";
 * const path = await Deno.makeTempFile({ suffix: ".luks" });
 * defineSecret("luks-doc", { data: "hunter2" });
 * await createImage(path, "luks", 1 << 20, { options: { "key-secret": "luks-doc", "iter-time": 10 } });
 * await using img = await open({ driver: "luks", "key-secret": "luks-doc", file: { driver: "file", filename: path } });
 * await img.pwrite(0, new Uint8Array(512).fill(1));
 * const back = new Uint8Array(512);
 * await img.pread(0, back);
 * console.log(back[0], img.length); // 1 1048576
 * removeSecret("luks-doc");
 * await Deno.remove(path);
 * ```
 *
 * @module
 */

export { luksDriver } from "./luks.ts";
export { setCryptoThreads } from "../_crypto/cipher_pool.ts";
