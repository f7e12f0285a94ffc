/**
 * qcow2's image options, one table: every option `qemu-img create -f qcow2`
 * or `qemu-img amend -f qcow2` takes (qemu-img 7.2's `-o help` of each), in
 * QEMU's order, with its help line, which of the two takes it, and the
 * value qemu-img's "Formatting ..." line shows when it is not given. The
 * creation options (`create.ts`), the encryption options (`_crypto.ts`),
 * amend (`_amend.ts`), the driver's option help (`qcow2.ts`) and
 * `blkgraph create`'s "Formatting" line (`cli/create.ts`) all read it.
 *
 * QEMU's order is that of `qcow2_create_opts` and `qcow2_amend_opts`: the
 * encryption options first (creation's, then the LUKS key slot ones amend
 * adds), then qcow2's creation-only options, then `QCOW_COMMON_OPTIONS`.
 * The "Formatting" line prints in this order, and amend checks in it.
 *
 * @module
 */

import type { OptionHelp } from "../../core/types.ts";

/** One qcow2 image option. */
export interface Qcow2ImageOption extends OptionHelp {
  /** qemu-img create takes it. */
  readonly create: boolean;
  /** qemu-img amend takes it. */
  readonly amend: boolean;
  /** What qemu-img's "Formatting ..." line shows when it is not given (absent: not shown). */
  readonly shownDefault?: string;
}

/** Every qcow2 create and amend option, in QEMU's order (see the module doc). */
export const QCOW2_IMAGE_OPTIONS: readonly Qcow2ImageOption[] = [
  {
    name: "encryption",
    type: "bool",
    help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
    create: true,
    amend: false,
  },
  { name: "encrypt.format", type: "str", help: "Encrypt the image, format choices: 'aes', 'luks'", create: true, amend: false },
  { name: "encrypt.key-secret", type: "str", help: "ID of secret providing qcow AES key or LUKS passphrase", create: true, amend: false },
  { name: "encrypt.cipher-alg", type: "str", help: "Name of encryption cipher algorithm", create: true, amend: false },
  { name: "encrypt.cipher-mode", type: "str", help: "Name of encryption cipher mode", create: true, amend: false },
  { name: "encrypt.ivgen-alg", type: "str", help: "Name of IV generator algorithm", create: true, amend: false },
  { name: "encrypt.ivgen-hash-alg", type: "str", help: "Name of IV generator hash algorithm", create: true, amend: false },
  { name: "encrypt.hash-alg", type: "str", help: "Name of encryption hash algorithm", create: true, amend: false },
  { name: "encrypt.state", type: "str", help: "Select new state of affected keyslots (active/inactive)", create: false, amend: true },
  { name: "encrypt.keyslot", type: "num", help: "Select a single keyslot to modify explicitly", create: false, amend: true },
  { name: "encrypt.old-secret", type: "str", help: "Select all keyslots that match this password", create: false, amend: true },
  {
    name: "encrypt.new-secret",
    type: "str",
    help: "New secret to set in the matching keyslots. Empty string to erase",
    create: false,
    amend: true,
  },
  { name: "encrypt.iter-time", type: "num", help: "Time to spend in PBKDF in milliseconds", create: true, amend: true },
  { name: "cluster_size", type: "size", help: "qcow2 cluster size", create: true, amend: false, shownDefault: "65536" },
  { name: "extended_l2", type: "bool", help: "Extended L2 tables", create: true, amend: false, shownDefault: "off" },
  {
    name: "preallocation",
    type: "str",
    help: "Preallocation mode (allowed values: off, metadata, falloc, full)",
    create: true,
    amend: false,
  },
  {
    name: "compression_type",
    type: "str",
    help: "Compression method used for image cluster compression",
    create: true,
    amend: false,
    shownDefault: "zlib",
  },
  { name: "size", type: "size", help: "Virtual disk size", create: true, amend: true },
  { name: "compat", type: "str", help: "Compatibility level (v2 [0.10] or v3 [1.1])", create: true, amend: true },
  { name: "backing_file", type: "str", help: "File name of a base image", create: true, amend: true },
  { name: "backing_fmt", type: "str", help: "Image format of the base image", create: true, amend: true },
  { name: "data_file", type: "str", help: "File name of an external data file", create: true, amend: true },
  { name: "data_file_raw", type: "bool", help: "The external data file must stay valid as a raw image", create: true, amend: true },
  { name: "lazy_refcounts", type: "bool", help: "Postpone refcount updates", create: true, amend: true, shownDefault: "off" },
  { name: "refcount_bits", type: "num", help: "Width of a reference count entry in bits", create: true, amend: true, shownDefault: "16" },
];

const names = (keep: (o: Qcow2ImageOption) => boolean): readonly string[] => QCOW2_IMAGE_OPTIONS.filter(keep).map((o) => o.name);
const help = (keep: (o: Qcow2ImageOption) => boolean): readonly OptionHelp[] =>
  QCOW2_IMAGE_OPTIONS.filter(keep).map(({ name, type, help }) => ({ name, type, help }));
const isEncrypt = (o: Qcow2ImageOption): boolean => o.name === "encryption" || o.name.startsWith("encrypt.");

/** The names qemu-img create takes, in QEMU's order (the "Formatting" line's order). */
export const QCOW2_CREATE_NAMES: readonly string[] = names((o) => o.create);
/** The names qemu-img amend takes, in QEMU's order (the order amend checks them in). */
export const QCOW2_AMEND_NAMES: readonly string[] = names((o) => o.amend);
/** The names only creation sets: amend refuses them with "This option is only supported for image creation". */
export const QCOW2_CREATION_ONLY_NAMES: readonly string[] = names((o) => o.create && !o.amend);
/** The encryption names creation takes (`encryption`, `encrypt.*`), in QEMU's order. */
export const ENCRYPT_CREATE_NAMES: readonly string[] = names((o) => o.create && isEncrypt(o));
/** The creation names other than encryption's (`size`, `cluster_size`, ...). */
export const PLAIN_CREATE_NAMES: readonly string[] = names((o) => o.create && !isEncrypt(o));
/** `qemu-img create -f qcow2 -o help`'s options (the driver's `createOptions`). */
export const QCOW2_CREATE_HELP: readonly OptionHelp[] = help((o) => o.create);
/** `qemu-img amend -f qcow2 -o help`'s options (the driver's `amendOptions`). */
export const QCOW2_AMEND_HELP: readonly OptionHelp[] = help((o) => o.amend);
/** What the "Formatting ..." line shows for options not given. */
export const QCOW2_SHOWN_DEFAULTS: Readonly<Record<string, string>> = Object.fromEntries(
  QCOW2_IMAGE_OPTIONS.filter((o) => o.shownDefault !== undefined).map((o) => [o.name, o.shownDefault!]),
);
