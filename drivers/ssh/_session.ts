/**
 * One SSH connection with its SFTP session and open remote file, made as
 * QEMU 7.2's `connect_to_ssh` makes it: the TCP connection (QEMU's
 * `inet_connect_saddr`, with its error words), a libssh session on that
 * socket (user, host, port, no compression, `~/.ssh/config`), the host key
 * check, authentication (`none`, then public keys: ssh-agent and the
 * default identity files, libssh's `ssh_userauth_publickey_auto`), SFTP,
 * and `sftp_open` of the path.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import {
  ATTR_SIZE,
  ATTR_TYPE,
  cstr,
  currentUserName,
  errno,
  KNOWN_HOSTS,
  type Libssh,
  outPointer,
  readCString,
  SSH_AUTH_ERROR,
  SSH_AUTH_METHOD_PUBLICKEY,
  SSH_AUTH_SUCCESS,
  SSH_OPTIONS_COMPRESSION,
  SSH_OPTIONS_FD,
  SSH_OPTIONS_HOST,
  SSH_OPTIONS_PORT,
  SSH_OPTIONS_USER,
  SSH_PUBLICKEY_HASH,
} from "./_libssh.ts";
import type { HostKeyCheck, SshOptions } from "./_options.ts";

const AF_UNSPEC = 0;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const AI_ADDRCONFIG = 0x20;
const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;
const EINPROGRESS = 115;
const POLLOUT = 4;
const SOL_SOCKET = 1;
const SO_ERROR = 4;
const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
/** `open(2)` flags `sftp_open` takes. */
export const O_RDONLY = 0, O_RDWR = 2, O_CREAT = 0o100, O_TRUNC = 0o1000;

function fail(code: BlockError["code"], message: string): never {
  throw new BlockError(code, message);
}

/** Connects a TCP socket to `host:port` (every address getaddrinfo gives, in order), as QEMU's inet_connect_saddr. */
async function connectTcp(lib: Libssh, host: string, port: string): Promise<number> {
  const hints = new Uint8Array(48);
  const hv = new DataView(hints.buffer);
  hv.setInt32(0, AI_ADDRCONFIG, true);
  hv.setInt32(4, AF_UNSPEC, true);
  hv.setInt32(8, SOCK_STREAM, true);
  const out = new Uint8Array(8);
  const rc = await lib.getaddrinfo(cstr(host), cstr(port), hints, out);
  if (rc !== 0) fail("EIO", `address resolution failed for ${host}:${port}: ${readCString(lib.gai_strerror(rc))}`);
  const res = outPointer(out);
  let lastErr = 0;
  try {
    for (let ai = res; ai;) {
      const v = new Deno.UnsafePointerView(ai);
      const fd = lib.socket(v.getInt32(4), v.getInt32(8) | SOCK_CLOEXEC, v.getInt32(12));
      if (fd >= 0) {
        const err = await connectOne(lib, fd, v.getPointer(24), v.getUint32(16));
        if (err === 0) {
          // As the socket of QEMU's ssh driver (strace: setsockopt(SOL_TCP, TCP_NODELAY, 1)): without it every 16 KiB
          // SFTP read waits for Nagle's algorithm, about 6 times slower.
          lib.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, new Uint8Array(new Int32Array([1]).buffer), 4);
          return fd;
        }
        lib.close(fd);
        lastErr = err;
      } else lastErr = errno(lib);
      ai = v.getPointer(40);
    }
  } finally {
    lib.freeaddrinfo(res);
  }
  return fail("EIO", `Failed to connect to '${host}:${port}': ${readCString(lib.strerror(lastErr))}`);
}

/** One connect(2), non-blocking so the wait happens in poll(2) on a worker thread; returns 0 or the errno. */
async function connectOne(lib: Libssh, fd: number, addr: Deno.PointerValue, len: number): Promise<number> {
  const flags = lib.fcntl(fd, F_GETFL, 0);
  lib.fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  if (lib.connect(fd, addr, len) !== 0) {
    const e = errno(lib);
    if (e !== EINPROGRESS) return e;
    const pfd = new Uint8Array(8);
    new DataView(pfd.buffer).setInt32(0, fd, true);
    new DataView(pfd.buffer).setInt16(4, POLLOUT, true);
    await lib.poll(pfd, 1n, -1);
    const val = new Uint8Array(4), vlen = new Uint8Array(4);
    new DataView(vlen.buffer).setUint32(0, 4, true);
    lib.getsockopt(fd, SOL_SOCKET, SO_ERROR, val, vlen);
    const soErr = new DataView(val.buffer).getInt32(0, true);
    if (soErr !== 0) return soErr;
  }
  lib.fcntl(fd, F_SETFL, flags);
  return 0;
}

/** An open remote file over SFTP. Not safe for two requests at once: {@linkcode SshSession.run} serialises them. */
export class SshSession {
  readonly lib: Libssh;
  readonly session: Deno.PointerValue;
  /** The user authenticated as. */
  readonly user: string;
  sftp: Deno.PointerValue = null;
  file: Deno.PointerValue = null;
  /** The file's size (kept up to date by writes and growing, as QEMU keeps `s->attrs->size`). */
  size = 0;
  /** The remote path is a regular file. */
  regular = false;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(lib: Libssh, session: Deno.PointerValue, user: string) {
    this.lib = lib;
    this.session = session;
    this.user = user;
  }

  /** Runs `fn` after every request before it: one request in flight per session, as QEMU's lock keeps it. */
  run<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#queue.then(() => {
      if (this.#closed) throw new BlockError("ESHUTDOWN", "The SSH session is closed");
      return fn();
    });
    this.#queue = p.catch(() => {});
    return p;
  }

  /** "MSG: libssh's error (libssh error code: N)", QEMU's session_error_setg. */
  sessionError(msg: string): string {
    return `${msg}: ${readCString(this.lib.ssh_get_error(this.session))} (libssh error code: ${this.lib.ssh_get_error_code(this.session)})`;
  }

  /** QEMU's sftp_error_setg: the session error plus the SFTP status code. */
  sftpError(msg: string): string {
    const lib = this.lib;
    const detail = `${readCString(lib.ssh_get_error(this.session))} (libssh error code: ${lib.ssh_get_error_code(this.session)}`;
    return `${msg}: ${detail}, sftp error code: ${this.sftpStatus()})`;
  }

  /** The SFTP status of the last failed request (SSH_FX_*). */
  sftpStatus(): number {
    return this.sftp ? this.lib.sftp_get_error(this.sftp) : 0;
  }

  /**
   * Connects, checks the host key, authenticates, starts SFTP and opens
   * `o.path` with `flags` (`O_*`; `mode` for a created file).
   */
  static async connect(lib: Libssh, o: SshOptions, flags: number, mode: number): Promise<SshSession> {
    const user = o.user ?? currentUserName(lib);
    if (user === undefined) fail("EINVAL", "Can't get user name");
    const port = Number(o.port);
    const fd = await connectTcp(lib, o.host, o.port);
    const session = lib.ssh_new();
    if (!session) {
      lib.close(fd);
      fail("EINVAL", "failed to initialize libssh session");
    }
    const s = new SshSession(lib, session, user);
    try {
      // libssh owns the socket from here: ssh_free closes it.
      if (lib.ssh_options_set(session, SSH_OPTIONS_FD, new Uint8Array(new Int32Array([fd]).buffer)) < 0) {
        lib.close(fd);
        fail("EINVAL", s.sessionError("failed to set the socket in the libssh session"));
      }
      lib.ssh_set_blocking(session, 1);
      if (lib.ssh_options_set(session, SSH_OPTIONS_USER, cstr(user)) < 0) {
        fail("EINVAL", s.sessionError("failed to set the user in the libssh session"));
      }
      if (lib.ssh_options_set(session, SSH_OPTIONS_HOST, cstr(o.host)) < 0) {
        fail("EINVAL", s.sessionError("failed to set the host in the libssh session"));
      }
      if (port > 0 && lib.ssh_options_set(session, SSH_OPTIONS_PORT, new Uint8Array(new Uint32Array([port]).buffer)) < 0) {
        fail("EINVAL", s.sessionError("failed to set the port in the libssh session"));
      }
      if (lib.ssh_options_set(session, SSH_OPTIONS_COMPRESSION, cstr("none")) < 0) {
        fail("EINVAL", s.sessionError("failed to disable the compression in the libssh session"));
      }
      if (lib.ssh_options_parse_config(session, null) < 0) fail("EINVAL", s.sessionError("failed to parse ~/.ssh/config"));
      if ((await lib.ssh_connect(session)) !== 0) fail("EIO", s.sessionError("failed to establish SSH session"));
      await s.#checkHostKey(o.hostKeyCheck);
      await s.#authenticate();
      s.sftp = await lib.sftp_new(session);
      if (!s.sftp) fail("EINVAL", s.sessionError("failed to initialize sftp handle"));
      if ((await lib.sftp_init(s.sftp)) < 0) fail("EINVAL", s.sftpError("failed to initialize sftp handle"));
      s.file = await lib.sftp_open(s.sftp, cstr(o.path), flags, mode);
      if (!s.file) {
        const status = s.sftpStatus();
        fail(status === 2 ? "ENOENT" : status === 3 ? "EACCES" : "EINVAL", s.sftpError(`failed to open remote file '${o.path}'`));
      }
      lib.sftp_file_set_blocking(s.file);
      const attrs = await lib.sftp_fstat(s.file);
      if (!attrs) fail("EINVAL", s.sftpError("failed to read file attributes"));
      const v = new Deno.UnsafePointerView(attrs);
      s.regular = v.getUint8(ATTR_TYPE) === 1;
      s.size = Number(v.getBigUint64(ATTR_SIZE));
      lib.sftp_attributes_free(attrs);
      return s;
    } catch (e) {
      await s.close();
      throw e;
    }
  }

  async #checkHostKey(hkc: HostKeyCheck): Promise<void> {
    const lib = this.lib;
    if (hkc.mode === "none") return;
    if (hkc.mode === "hash") {
      const keyOut = new Uint8Array(8);
      if (lib.ssh_get_server_publickey(this.session, keyOut) !== 0) fail("EINVAL", this.sessionError("failed to read remote host key"));
      const key = outPointer(keyOut);
      const hashOut = new Uint8Array(8), lenOut = new Uint8Array(8);
      const r = lib.ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH[hkc.type], hashOut, lenOut);
      const keyType = readCString(lib.ssh_key_type_to_char(lib.ssh_key_type(key)));
      lib.ssh_key_free(key);
      if (r !== 0) fail("EINVAL", this.sessionError("failed reading the hash of the server SSH key"));
      const len = Number(new DataView(lenOut.buffer).getBigUint64(0, true));
      const bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(outPointer(hashOut)!, len).slice(0));
      lib.ssh_clean_pubkey_hash(hashOut);
      const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      if (!fingerprintMatches(bytes, hkc.hash)) {
        throw new BlockError(
          "EPERM",
          `remote host ${keyType} key fingerprint '${hkc.type}:${hex}' does not match host_key_check '${hkc.type}:${hkc.hash}'`,
        );
      }
      return;
    }
    const state = await lib.ssh_session_is_known_server(this.session);
    switch (state) {
      case KNOWN_HOSTS.OK:
        return;
      case KNOWN_HOSTS.CHANGED:
        throw new BlockError("EINVAL", this.#changedKeyMessage());
      case KNOWN_HOSTS.OTHER:
        fail("EINVAL", "host key for this server not found, another type exists");
        break;
      case KNOWN_HOSTS.UNKNOWN:
        fail("EINVAL", "no host key was found in known_hosts");
        break;
      case KNOWN_HOSTS.NOT_FOUND:
        fail("ENOENT", "known_hosts file not found");
        break;
      case KNOWN_HOSTS.ERROR:
        fail("EINVAL", "error while checking the host");
        break;
      default:
        fail("EINVAL", `error while checking for known server (${state})`);
    }
  }

  #changedKeyMessage(): string {
    const lib = this.lib;
    const generic = "host key does not match the one in known_hosts; this may be a possible attack";
    const keyOut = new Uint8Array(8);
    if (lib.ssh_get_server_publickey(this.session, keyOut) !== 0) return generic;
    const key = outPointer(keyOut);
    const hashOut = new Uint8Array(8), lenOut = new Uint8Array(8);
    const r = lib.ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH.sha256, hashOut, lenOut);
    const keyType = readCString(lib.ssh_key_type_to_char(lib.ssh_key_type(key)));
    lib.ssh_key_free(key);
    if (r !== 0) return generic;
    const len = new DataView(lenOut.buffer).getBigUint64(0, true);
    const fp = lib.ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH.sha256, outPointer(hashOut), len);
    lib.ssh_clean_pubkey_hash(hashOut);
    if (!fp) return generic;
    const text = readCString(fp);
    lib.ssh_string_free_char(fp);
    return `host key (${keyType} key with fingerprint ${text}) does not match the one in known_hosts; this may be a possible attack`;
  }

  async #authenticate(): Promise<void> {
    const lib = this.lib;
    const r = await lib.ssh_userauth_none(this.session, null);
    if (r === SSH_AUTH_ERROR) fail("EPERM", this.sessionError("failed to authenticate using none authentication"));
    if (r === SSH_AUTH_SUCCESS) return;
    const methods = lib.ssh_userauth_list(this.session, null);
    if (methods & SSH_AUTH_METHOD_PUBLICKEY) {
      const p = await lib.ssh_userauth_publickey_auto(this.session, null, null);
      if (p === SSH_AUTH_ERROR) fail("EINVAL", this.sessionError("failed to authenticate using publickey authentication"));
      if (p === SSH_AUTH_SUCCESS) return;
    }
    fail("EPERM", "failed to authenticate using publickey authentication and the identities held by your ssh-agent");
  }

  /** Closes the file, SFTP and the connection (idempotent). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#queue;
    const lib = this.lib;
    if (this.file) await lib.sftp_close(this.file);
    if (this.sftp) await lib.sftp_free(this.sftp);
    await lib.ssh_disconnect(this.session);
    lib.ssh_free(this.session);
    this.file = this.sftp = null;
  }
}

/** QEMU 7.2's compare_fingerprint: the hash as hex digit pairs (either case), nothing after. */
function fingerprintMatches(bytes: Uint8Array, given: string): boolean {
  if (given.length !== bytes.length * 2 || !/^[0-9a-fA-F]*$/.test(given)) return false;
  return bytes.every((b, i) => parseInt(given.slice(2 * i, 2 * i + 2), 16) === b);
}
