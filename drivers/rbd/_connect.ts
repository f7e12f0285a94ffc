/**
 * Reading the `rbd` driver's options and connecting to the cluster, as
 * QEMU's `qemu_rbd_connect` does: `rados_create(user)`, the config file
 * (`conf`, or Ceph's default search where a failure is ignored), the
 * filename's key=value Ceph options in order, `server` → `mon_host`, the
 * key from `key-secret`, `auth-client-required`, `rbd_cache` from the
 * cache mode, then `rados_connect` (on a worker thread: with no reachable
 * monitor it waits `client_mount_timeout`), the pool's I/O context and the
 * namespace. Every return code is checked, and a failed step shuts the
 * handle down (pitfall: `rados_ioctx_create` on a handle whose connect
 * failed aborts the process).
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { checkKnownOptions, optBool, optEnum, type Options, optString } from "../../core/options.ts";
import { getSecret } from "../../core/secrets.ts";
import { isPlainObject } from "../../core/spec.ts";
import { keyValuePairs, parseRbdFilename } from "./_filename.ts";
import { cstr, describeErrno, type Librbd, outPointer, rbdError } from "./_librbd.ts";

/** Options the driver accepts (QEMU's BlockdevOptionsRbd plus the legacy filename keys). */
export const RBD_OPTIONS = [
  "pool",
  "namespace",
  "image",
  "snapshot",
  "conf",
  "user",
  "key-secret",
  "password-secret",
  "auth-client-required",
  "server",
  "encrypt",
  "filename",
  "=keyvalue-pairs",
  "cache.direct",
  "cache.no-flush",
  "x-completion",
] as const;

/** The driver's options, validated. */
export interface RbdOptions {
  pool: string;
  namespace: string;
  image: string;
  snapshot?: string;
  conf?: string;
  user?: string;
  keySecret?: string;
  authClientRequired?: string;
  monHost?: string;
  keyValues: [string, string][];
  /** `cache.direct`: QEMU's BDRV_O_NOCACHE, which sets `rbd_cache=false`. */
  direct: boolean;
  /** `x-completion`: how librbd signals completions (eventfd, or a socket where permitted; for benchmarks and tests). */
  completion: "socket" | "eventfd";
}

/** Validates driver options (a `filename` in `rbd:` form fills in what is missing). */
export function readRbdOptions(raw: Options): RbdOptions {
  checkKnownOptions(raw, RBD_OPTIONS, "rbd");
  let o: Options = raw;
  const fname = optString(raw, "filename", "rbd");
  if (fname !== undefined) o = { ...parseRbdFilename(fname), ...raw };
  const need = (key: string): string => {
    const v = optString(o, key, "rbd");
    if (!v) throw new BlockError("EINVAL", `Driver 'rbd' needs option '${key}' (or a filename rbd:pool/image)`);
    return v;
  };
  if (o.encrypt !== undefined) {
    throw new BlockError("ENOTSUP", "Invalid option 'encrypt' of driver 'rbd': RBD encryption is not supported");
  }
  const keySecret = optString(o, "key-secret", "rbd");
  const legacy = optString(o, "password-secret", "rbd");
  if (keySecret !== undefined && legacy !== undefined) {
    throw new BlockError("EINVAL", "Invalid options of driver 'rbd': legacy 'password-secret' clashes with 'key-secret'");
  }
  return {
    pool: need("pool"),
    namespace: optString(o, "namespace", "rbd") ?? "",
    image: need("image"),
    snapshot: optString(o, "snapshot", "rbd") || undefined,
    conf: optString(o, "conf", "rbd"),
    user: optString(o, "user", "rbd"),
    keySecret: keySecret ?? legacy,
    authClientRequired: authModes(o["auth-client-required"]),
    monHost: monHost(o.server),
    keyValues: keyValuePairs(o["=keyvalue-pairs"]),
    direct: optBool(o, "cache.direct", "rbd") ?? false,
    completion: optEnum(o, "x-completion", "rbd", ["socket", "eventfd"] as const) ?? "eventfd",
  };
}

function authModes(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  const list = Array.isArray(v) ? v : [v];
  for (const m of list) {
    if (m !== "cephx" && m !== "none") {
      throw new BlockError(
        "EINVAL",
        `Invalid value '${String(m)}' for option 'auth-client-required' of driver 'rbd': expected cephx or none`,
      );
    }
  }
  return list.join(";");
}

/** `server: [{host, port}, …]` → Ceph's `mon_host` (IPv6 hosts in brackets). */
function monHost(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  const list = Array.isArray(v) ? v : isPlainObject(v) ? Object.values(v) : undefined;
  if (!list) throw new BlockError("EINVAL", `Invalid value '${JSON.stringify(v)}' for option 'server' of driver 'rbd': expected a list`);
  return list.map((s, i) => {
    const host = isPlainObject(s) ? optString(s, "host", "rbd") : undefined;
    const port = isPlainObject(s) ? optString(s, "port", "rbd") : undefined;
    if (!host || !port) {
      throw new BlockError("EINVAL", `Invalid option 'server.${i}' of driver 'rbd': give both 'host' and 'port'`);
    }
    return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
  }).join(";");
}

/** A connected cluster handle with an I/O context on the pool (and namespace). */
export interface Connection {
  readonly cluster: Deno.PointerValue;
  readonly ioctx: Deno.PointerValue;
  /** The monitors the connection uses (Ceph's `mon_host`), for messages. */
  readonly monHost: string;
  /** librbd's cache is on (`rbd_cache` as librados reads it back). */
  readonly rbdCache: boolean;
  /** Destroys the I/O context and shuts the handle down. */
  close(): Promise<void>;
}

const B64 = new TextEncoder().encode("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");

/** Base64 of `bytes` as a NUL-terminated buffer, built without a JS string (so it can be zeroed). */
export function base64CString(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(bytes.length / 3) * 4 + 1);
  let o = 0;
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    out[o++] = B64[(n >> 18) & 63];
    out[o++] = B64[(n >> 12) & 63];
    out[o++] = i + 1 < bytes.length ? B64[(n >> 6) & 63] : 61;
    out[o++] = i + 2 < bytes.length ? B64[n & 63] : 61;
  }
  return out;
}

function confGet(lib: Librbd, cluster: Deno.PointerValue, key: string): string | undefined {
  const buf = new Uint8Array(1024);
  if (lib.rados_conf_get(cluster, cstr(key), buf, buf.length) < 0) return undefined;
  const end = buf.indexOf(0);
  return new TextDecoder().decode(buf.subarray(0, end < 0 ? buf.length : end));
}

function set(lib: Librbd, cluster: Deno.PointerValue, key: string, value: string | Uint8Array, what: string): void {
  const r = lib.rados_conf_set(cluster, cstr(key), typeof value === "string" ? cstr(value) : value);
  // As QEMU: any failure is EINVAL ("invalid conf option"); librados says ENOENT for an unknown name.
  if (r < 0) {
    const why = r === -2 ? "no such Ceph option" : `bad value (${describeErrno(r).text})`;
    throw new BlockError("EINVAL", `Invalid Ceph option '${key}' (${what}): ${why}`);
  }
}

/**
 * Connects to the cluster and opens the pool's I/O context. `cache` is the
 * `rbd_cache` value to set (QEMU: true unless `cache.direct`).
 */
export async function connect(lib: Librbd, o: RbdOptions, cache: boolean): Promise<Connection> {
  const out = new Uint8Array(8);
  const r0 = lib.rados_create(out, o.user ? cstr(o.user) : null);
  if (r0 < 0) throw rbdError(r0, `Cannot create a Ceph client${o.user ? ` for user '${o.user}'` : ""}`);
  const cluster = outPointer(out);
  try {
    // conf=NULL searches Ceph's default places ($CEPH_CONF, /etc/ceph/ceph.conf); a failure there is fine.
    const rc = lib.rados_conf_read_file(cluster, o.conf !== undefined ? cstr(o.conf) : null);
    if (o.conf !== undefined && rc < 0) throw rbdError(rc, `Cannot read the Ceph config file '${o.conf}'`);
    // librbd starts every handle in writethrough mode until its first flush
    // (for guests that never flush). blkgraph's callers flush, so start in
    // writeback, as the rbd CLI does; a flush at open would do the same but
    // waits for the exclusive lock (~30 s after a killed writer), even when
    // the node only reads. The filename's options may turn it back on.
    set(lib, cluster, "rbd_cache_writethrough_until_flush", "false", "blkgraph's default");
    for (const [k, v] of o.keyValues) set(lib, cluster, k, v, "from the rbd: filename");
    if (o.monHost) set(lib, cluster, "mon_host", o.monHost, "from option 'server'");
    if (o.keySecret !== undefined) {
      const raw = getSecret(o.keySecret, "key-secret");
      const key = base64CString(raw);
      raw.fill(0);
      try {
        set(lib, cluster, "key", key, `from secret '${o.keySecret}'`);
      } finally {
        key.fill(0);
      }
    }
    if (o.authClientRequired) set(lib, cluster, "auth_client_required", o.authClientRequired, "from option 'auth-client-required'");
    // As QEMU: ignore a failure (the only one is an unknown option).
    lib.rados_conf_set(cluster, cstr("rbd_cache"), cstr(cache ? "true" : "false"));
    const mons = confGet(lib, cluster, "mon_host") ?? "";
    const rbdCache = confGet(lib, cluster, "rbd_cache") === "true";
    const rc2 = await lib.rados_connect(cluster);
    if (rc2 < 0) {
      const timeout = confGet(lib, cluster, "client_mount_timeout");
      const { code, text } = describeErrno(rc2);
      const where = mons ? `at ${mons}` : "(no monitor address: give conf=, mon_host= or server, or set up /etc/ceph/ceph.conf)";
      const t = rc2 === -110 && timeout ? ` (client_mount_timeout ${Number(timeout)} s)` : "";
      throw new BlockError(code, `Cannot connect to the Ceph cluster ${where}: ${text}${t}`);
    }
    const ioOut = new Uint8Array(8);
    const ri = await lib.rados_ioctx_create(cluster, cstr(o.pool), ioOut);
    if (ri < 0) {
      if (ri === -2) throw new BlockError("ENOENT", `Cannot open pool '${o.pool}' on the Ceph cluster at ${mons}: the pool does not exist`);
      throw rbdError(ri, `Cannot open pool '${o.pool}' on the Ceph cluster at ${mons}`);
    }
    const ioctx = outPointer(ioOut);
    try {
      if (o.namespace) {
        const exists = new Uint8Array(1);
        const rn = await lib.rbd_namespace_exists(ioctx, cstr(o.namespace), exists);
        if (rn < 0) throw rbdError(rn, `Cannot look up namespace '${o.namespace}' in pool '${o.pool}'`);
        if (!exists[0]) throw new BlockError("ENOENT", `Cannot open namespace '${o.namespace}' in pool '${o.pool}': it does not exist`);
      }
      // "" is the default namespace (what QEMU passes when none is given).
      lib.rados_ioctx_set_namespace(ioctx, cstr(o.namespace));
    } catch (e) {
      lib.rados_ioctx_destroy(ioctx);
      throw e;
    }
    let closed = false;
    return {
      cluster,
      ioctx,
      monHost: mons,
      rbdCache,
      async close() {
        if (closed) return;
        closed = true;
        lib.rados_ioctx_destroy(ioctx);
        await lib.rados_shutdown(cluster);
      },
    };
  } catch (e) {
    // Shut down even after a failed connect; never touch the handle otherwise.
    await lib.rados_shutdown(cluster);
    throw e;
  }
}
