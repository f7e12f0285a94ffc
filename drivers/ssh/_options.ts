/**
 * The `ssh` driver's options and filename, read as QEMU 7.2's
 * `block/ssh.c` reads them: QAPI's `BlockdevOptionsSsh` (`server.host`,
 * `server.port`, `path`, `user`, `host-key-check.{mode,type,hash}`), the
 * legacy flat options (`host`, `port` — a number —, `host_key_check`), and
 * the URI `ssh://[user@]host[:port]/path[?host_key_check=…]`.
 *
 * Every error names the option and value; the drop-ins print QEMU's words
 * (`qemuMessage`).
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { isPlainObject } from "../../core/spec.ts";

/** How the server's host key is checked (QEMU's `SshHostKeyCheck`). */
export type HostKeyCheck =
  | { mode: "none" }
  | { mode: "known_hosts" }
  | { mode: "hash"; type: "md5" | "sha1" | "sha256"; hash: string };

/** The driver's options, validated. */
export interface SshOptions {
  /** `server.host`. */
  host: string;
  /** `server.port`, as given (a decimal number; QEMU keeps the string). */
  port: string;
  /** The remote file. */
  path: string;
  /** Remote user; undefined: the local user's name. */
  user?: string;
  /** Host key check; QEMU's default is `known_hosts`. */
  hostKeyCheck: HostKeyCheck;
  /** The legacy `host_key_check` string, as given (it goes into the refreshed filename, as in QEMU). */
  legacyHostKeyCheck?: string;
}

/** Every option the driver takes (flattened names). */
export const SSH_OPTIONS = [
  "server.host",
  "server.port",
  "path",
  "user",
  "host-key-check.mode",
  "host-key-check.type",
  "host-key-check.hash",
  "host",
  "port",
  "host_key_check",
  "filename",
  // Set by the cache modes; SFTP has no O_DIRECT and QEMU's ssh ignores them too.
  "cache.direct",
  "cache.no-flush",
] as const;

function invalid(message: string, qemu: string): never {
  throw new BlockError("EINVAL", message, { qemuMessage: qemu });
}

/** `{server: {host}}` → `{"server.host": …}` (dotted keys arrive nested). */
export function flattenSshOptions(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) {
    if ((k === "server" || k === "host-key-check" || k === "cache") && isPlainObject(v)) {
      for (const [k2, v2] of Object.entries(v)) out[`${k}.${k2}`] = v2;
    } else out[k] = v;
  }
  return out;
}

function str(o: Record<string, unknown>, key: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return invalid(
    `Invalid value '${JSON.stringify(v)}' for option '${key}' of driver 'ssh': expected a string`,
    `Invalid parameter type for '${key}', expected: string`,
  );
}

/** The legacy `port` option: a number (QemuOpts' QEMU_OPT_NUMBER: decimal, hex or octal, no fraction). */
function legacyPort(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  const s = String(v);
  if ((typeof v === "number" && Number.isInteger(v)) || (typeof v === "string" && /^\s*-?(0[xX][0-9a-fA-F]+|\d+)$/.test(v))) {
    return s.trim();
  }
  return invalid(`Invalid value '${s}' for option 'port' of driver 'ssh': expected a number`, "Parameter 'port' expects a number");
}

/** The legacy `host_key_check` string (`no`, `yes`, `md5:HEX`, `sha1:HEX`, `sha256:HEX`). */
export function parseLegacyHostKeyCheck(s: string): HostKeyCheck {
  if (s === "no") return { mode: "none" };
  if (s === "yes") return { mode: "known_hosts" };
  for (const type of ["md5", "sha1", "sha256"] as const) {
    if (s.startsWith(`${type}:`)) return { mode: "hash", type, hash: s.slice(type.length + 1) };
  }
  return invalid(
    `Invalid value '${s}' for option 'host_key_check' of driver 'ssh': expected no, yes, md5:HASH, sha1:HASH or sha256:HASH`,
    `unknown host_key_check setting (${s})`,
  );
}

function enumValue<T extends string>(o: Record<string, unknown>, key: string, choices: readonly T[]): T | undefined {
  const v = str(o, key);
  if (v === undefined) return undefined;
  if (!(choices as readonly string[]).includes(v)) {
    invalid(
      `Invalid value '${v}' for option '${key}' of driver 'ssh': expected one of ${choices.join(", ")}`,
      `Parameter '${key.split(".").pop()}' does not accept value '${v}'`,
    );
  }
  return v as T;
}

/**
 * Validates the driver's options (nested or dotted; a `filename` in
 * `ssh://` form fills them in).
 *
 * @example
 * ```ts
 * import { readSshOptions } from "./_options.ts";
 * const o = readSshOptions({ host: "example.org", path: "/disk.img", host_key_check: "no" });
 * console.log(o.host, o.port, o.hostKeyCheck.mode); // example.org 22 none
 * ```
 */
export function readSshOptions(raw: Record<string, unknown>): SshOptions {
  let o = flattenSshOptions(raw);
  for (const key of Object.keys(o)) {
    if (!(SSH_OPTIONS as readonly string[]).includes(key)) {
      invalid(
        `Unknown option '${key}' for driver 'ssh' (known options: ${SSH_OPTIONS.join(", ")})`,
        `Parameter '${key}' is unexpected`,
      );
    }
  }
  const filename = str(o, "filename");
  if (filename !== undefined) {
    const { filename: _, ...rest } = o;
    for (const k of ["user", "host", "port", "path", "host_key_check"]) {
      if (rest[k] !== undefined || Object.keys(rest).some((r) => r.startsWith("server."))) {
        invalid(
          `Invalid options of driver 'ssh': '${k === "host" ? "server.host" : k}' and a filename '${filename}' cannot be given together`,
          "user, host, port, path, host_key_check cannot be used at the same time as a file option",
        );
      }
    }
    o = { ...flattenSshOptions(parseSshFilename(filename)), ...rest };
  }
  // Legacy flat options become QAPI's (ssh_process_legacy_options).
  const flatHost = str(o, "host");
  const flatPort = legacyPort(o.port);
  let host = str(o, "server.host");
  let port = str(o, "server.port");
  if (flatHost !== undefined) {
    host = flatHost;
    port = flatPort ?? port ?? "22";
  } else if (flatPort !== undefined) port = flatPort;
  const legacy = str(o, "host_key_check");
  if (host === undefined && port === undefined) {
    invalid("Driver 'ssh' needs option 'server.host' (or a filename ssh://HOST/PATH)", "Parameter 'server' is missing");
  }
  if (host === undefined) invalid("Driver 'ssh' needs option 'server.host'", "Parameter 'server.host' is missing");
  if (port === undefined) invalid("Driver 'ssh' needs option 'server.port'", "Parameter 'server.port' is missing");
  const path = str(o, "path");
  if (path === undefined) invalid("Driver 'ssh' needs option 'path' (the remote file)", "Parameter 'path' is missing");
  let hostKeyCheck: HostKeyCheck = { mode: "known_hosts" };
  if (legacy !== undefined) hostKeyCheck = parseLegacyHostKeyCheck(legacy);
  else {
    const mode = enumValue(o, "host-key-check.mode", ["none", "hash", "known_hosts"] as const);
    if (mode === "none" || mode === "known_hosts") hostKeyCheck = { mode };
    else if (mode === "hash") {
      const type = enumValue(o, "host-key-check.type", ["md5", "sha1", "sha256"] as const);
      if (type === undefined) {
        invalid(
          "Driver 'ssh' needs option 'host-key-check.type' with host-key-check.mode=hash",
          "Parameter 'host-key-check.type' is missing",
        );
      }
      const hash = str(o, "host-key-check.hash");
      if (hash === undefined) {
        invalid(
          "Driver 'ssh' needs option 'host-key-check.hash' with host-key-check.mode=hash",
          "Parameter 'host-key-check.hash' is missing",
        );
      }
      hostKeyCheck = { mode, type, hash };
    }
  }
  if (!/^[-+]?\d+$/.test(port)) {
    invalid(`Invalid value '${port}' for option 'server.port' of driver 'ssh': expected a decimal number`, "Use only numeric port value");
  }
  return { host, port, path, user: str(o, "user"), hostKeyCheck, legacyHostKeyCheck: legacy };
}

function decode(s: string, what: string, filename: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return invalid(`Invalid ssh filename '${filename}': the ${what} is not valid percent-encoding`, "could not parse URI");
  }
}

/**
 * Parses QEMU's ssh URI, `ssh://[user@]host[:port]/path[?host_key_check=…]`,
 * into options (other query parameters are ignored, as in QEMU).
 *
 * @example
 * ```ts
 * import { parseSshFilename } from "@blkgraph/blkgraph/drivers/ssh";
 * const o = parseSshFilename("ssh://alice@example.org:2222/srv/disk.img?host_key_check=no");
 * console.log(JSON.stringify(o)); // {"user":"alice","server":{"host":"example.org","port":"2222"},"path":"/srv/disk.img","host_key_check":"no"}
 * ```
 */
export function parseSshFilename(filename: string): Record<string, unknown> {
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?$/.exec(filename);
  if (!m) invalid(`Invalid ssh filename '${filename}': expected ssh://[USER@]HOST[:PORT]/PATH`, "could not parse URI");
  const [, scheme, authority, rawPath, query] = m;
  if (scheme !== "ssh") invalid(`Invalid ssh filename '${filename}': the scheme must be 'ssh'`, "URI scheme must be 'ssh'");
  const at = authority.lastIndexOf("@");
  const user = at >= 0 ? decode(authority.slice(0, at), "user", filename) : "";
  const hp = /^(\[[^\]]*\]|[^:]*)(?::(\d*))?$/.exec(authority.slice(at + 1));
  if (!hp) invalid(`Invalid ssh filename '${filename}': the port must be a number`, "could not parse URI");
  const host = decode(hp[1].replace(/^\[(.*)\]$/, "$1"), "host", filename);
  if (!host) invalid(`Invalid ssh filename '${filename}': no host`, "missing hostname in URI");
  const path = decode(rawPath, "path", filename);
  if (!path) invalid(`Invalid ssh filename '${filename}': no remote path`, "missing remote path in URI");
  const out: Record<string, unknown> = {};
  if (user) out.user = user;
  out.server = { host, port: hp[2] ? String(Number(hp[2])) : "22" };
  out.path = path;
  for (const pair of (query ?? "").split(/[&;]/)) {
    const eq = pair.indexOf("=");
    const name = eq < 0 ? pair : pair.slice(0, eq);
    if (name === "host_key_check") out.host_key_check = decode(eq < 0 ? "" : pair.slice(eq + 1), "query", filename);
  }
  return out;
}

/**
 * The filename QEMU gives an ssh node (its `ssh_refresh_filename`):
 * `ssh://USER@HOST:PORT/PATH`, plus `?host_key_check=…` when the legacy
 * option was given. An IPv6 address is put in brackets (QEMU prints it bare,
 * which no URI parser reads back).
 */
export function sshFilename(o: SshOptions, user: string): string {
  const host = o.host.includes(":") ? `[${o.host}]` : o.host;
  return `ssh://${user}@${host}:${o.port}${o.path}${o.legacyHostKeyCheck !== undefined ? `?host_key_check=${o.legacyHostKeyCheck}` : ""}`;
}
