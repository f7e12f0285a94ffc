/**
 * The `ssh` protocol driver: a file on an SSH server, read and written over
 * SFTP through libssh (Debian's `libssh-4`, bound with Deno's FFI), as
 * QEMU's `block/ssh.c`. Needs `--allow-ffi` (and `--allow-net` is not
 * needed: the socket is libc's).
 *
 * Options (QEMU's `BlockdevOptionsSsh`): `server.host`, `server.port`,
 * `path` (required), `user` (default: the local user), `host-key-check`
 * (`mode=none|hash|known_hosts`, default `known_hosts`; with `hash`:
 * `type=md5|sha1|sha256` and `hash=` the key's hash in hex), and QEMU's
 * legacy flat forms `host`, `port` (a number), `host_key_check`
 * (`no`, `yes`, `md5:HEX`, `sha1:HEX`, `sha256:HEX`). Filename:
 * `ssh://[user@]host[:port]/path[?host_key_check=…]`.
 *
 * Authentication is QEMU's: the `none` method, then public keys as libssh's
 * `ssh_userauth_publickey_auto` tries them (the keys of the ssh-agent at
 * `$SSH_AUTH_SOCK`, then `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa` without
 * a passphrase). No passwords, no keyboard-interactive. `~/.ssh/config` is
 * read, and `known_hosts` is libssh's (`~/.ssh/known_hosts` and
 * `/etc/ssh/ssh_known_hosts`).
 *
 * I/O: one request in flight per connection (QEMU serialises them with a
 * lock too), each libssh call on a worker thread; reads in 16 KiB SFTP
 * requests and writes in 128 KiB ones, as QEMU's. A flush is the server's
 * `fsync@openssh.com` extension; a server without it gets one warning and
 * no flush, as in QEMU. Writes past the end grow the file; `truncate` only
 * grows (shrinking is refused, as in QEMU 7.2). `create` on an `ssh://`
 * target creates the remote file (truncating one that exists, as QEMU's
 * `ssh_co_create`, which opens it O_TRUNC).
 *
 * @example
 * ```ts
 * import { parseSshFilename } from "@blkgraph/blkgraph/drivers/ssh";
 * // open("ssh://alice@example.org/srv/disk.qcow2") needs a server; the filename form alone:
 * const o = parseSshFilename("ssh://alice@example.org/srv/disk.qcow2");
 * console.log(o.user, o.path); // alice /srv/disk.qcow2
 * ```
 *
 * @module
 */

import { BlockError, reportDriverMessage } from "../../core/errors.ts";
import { registerDriver } from "../../core/registry.ts";
import type { BlockDriver, DriverInstance } from "../../core/node.ts";
import type { BlockLimits, TruncateOptions, WriteOptions } from "../../core/types.ts";
import { cstr, currentUserName, libsshError, loadLibssh } from "./_libssh.ts";
import { readSshOptions, SSH_OPTIONS, sshFilename, type SshOptions } from "./_options.ts";
import { O_CREAT, O_RDONLY, O_RDWR, O_TRUNC, SshSession } from "./_session.ts";

export { type HostKeyCheck, parseSshFilename, readSshOptions, type SshOptions } from "./_options.ts";

/** Largest SFTP read request (QEMU's: "the size of SFTP packets is limited to 32K bytes, so limit ourselves to 16K"). */
const READ_CHUNK = 16384;
/** Largest SFTP write request (QEMU's 128 KiB). */
const WRITE_CHUNK = 131072;

class SshInstance implements DriverInstance {
  // QEMU's ssh driver has sector-based callbacks (bdrv_co_readv/writev), so its nodes have a 512-byte request alignment:
  // the core pads requests as QEMU does, and images written over ssh end where QEMU's end.
  readonly limits: Partial<BlockLimits> = { requestAlignment: 512 };
  readonly #s: SshSession;
  readonly #o: SshOptions;
  readonly #node: string;
  readonly #fsync: boolean;
  #warned = false;

  constructor(s: SshSession, o: SshOptions, node: string) {
    this.#s = s;
    this.#o = o;
    this.#node = node;
    this.#fsync = s.lib.sftp_extension_supported(s.sftp, cstr("fsync@openssh.com"), cstr("1")) !== 0;
  }

  get zeroInit(): boolean {
    return this.#s.regular;
  }

  #err(what: string, offset: number, length: number): never {
    // SSH_FX_PERMISSION_DENIED is EACCES; anything else (a lost connection, a full disk, a failure) is EIO, as QEMU returns it.
    const code = this.#s.sftpStatus() === 3 ? "EACCES" : "EIO";
    throw new BlockError(code, this.#s.sftpError(`${what} ${length} bytes at offset ${offset} of '${this.#o.path}' failed`), {
      node: this.#node,
      offset,
      length,
    });
  }

  getLength(): number {
    return this.#s.size;
  }

  pread(offset: number, buf: Uint8Array): Promise<void> {
    return this.#s.run(async () => {
      const lib = this.#s.lib;
      void buf.buffer;
      if (lib.sftp_seek64(this.#s.file, BigInt(offset)) < 0) this.#err("seek for reading", offset, buf.length);
      let done = 0;
      while (done < buf.length) {
        const n = Math.min(buf.length - done, READ_CHUNK);
        const r = await lib.sftp_read(this.#s.file, buf.subarray(done, done + n), BigInt(n));
        if (r < 0) this.#err("reading", offset, buf.length);
        if (r === 0) {
          // End of file: a short read, padded with zeros (as QEMU's ssh_read).
          buf.fill(0, done);
          return;
        }
        done += r;
      }
    });
  }

  pwrite(offset: number, data: Uint8Array, _opts: WriteOptions): Promise<void> {
    return this.#s.run(() => this.#write(offset, data));
  }

  async #write(offset: number, data: Uint8Array): Promise<void> {
    const lib = this.#s.lib;
    void data.buffer;
    if (lib.sftp_seek64(this.#s.file, BigInt(offset)) < 0) this.#err("seek for writing", offset, data.length);
    let done = 0;
    while (done < data.length) {
      const n = Math.min(data.length - done, WRITE_CHUNK);
      const r = await lib.sftp_write(this.#s.file, data.subarray(done, done + n), BigInt(n));
      if (r < 0) this.#err("writing", offset, data.length);
      done += r;
      if (offset + done > this.#s.size) this.#s.size = offset + done;
    }
  }

  flush(): Promise<void> {
    return this.#s.run(async () => {
      if (!this.#fsync) {
        // QEMU's unsafe_flush_warning: once per node, and the flush succeeds.
        if (!this.#warned) {
          this.#warned = true;
          reportDriverMessage({ node: this.#node, format: "ssh", message: `warning: ssh server ${this.#o.host} does not support fsync` });
          reportDriverMessage({ node: this.#node, format: "ssh", message: "to support fsync, you need OpenSSH >= 6.3" });
        }
        return;
      }
      if ((await this.#s.lib.sftp_fsync(this.#s.file)) < 0) {
        throw new BlockError("EIO", this.#s.sftpError(`Cannot flush '${this.#o.path}'`), { node: this.#node });
      }
    });
  }

  truncate(length: number, opts: TruncateOptions): Promise<void> {
    return this.#s.run(async () => {
      if (opts.prealloc && opts.prealloc !== "off") {
        throw new BlockError("ENOTSUP", `Unsupported preallocation mode '${opts.prealloc}'`, { node: this.#node });
      }
      if (length < this.#s.size) {
        throw new BlockError("ENOTSUP", "ssh driver does not support shrinking files", { node: this.#node });
      }
      if (length > this.#s.size) await growFile(this.#s, length);
    });
  }

  close(): Promise<void> {
    return this.#s.close();
  }
}

/** QEMU's ssh_grow_file: one zero byte written at `length - 1` (so nothing written before is touched). */
async function growFile(s: SshSession, length: number): Promise<void> {
  if (s.lib.sftp_seek64(s.file, BigInt(length - 1)) < 0 || (await s.lib.sftp_write(s.file, new Uint8Array(1), 1n)) < 0) {
    throw new BlockError("EIO", s.sftpError("Failed to grow file"));
  }
  s.size = length;
}

function library() {
  const lib = loadLibssh();
  if (!lib) throw libsshError();
  return lib;
}

/**
 * Creates (or truncates) the remote file and grows it to `size`, as
 * QEMU's `ssh_co_create`; `options` are the driver's options or a parsed
 * `ssh://` filename.
 *
 * @example
 * ```ts
 * import { createSshFile } from "@blkgraph/blkgraph/drivers/ssh";
 * // needs a server: await createSshFile({ filename: "ssh://alice@example.org/srv/new.img" }, 1 << 20);
 * console.log(typeof createSshFile); // function
 * ```
 */
export async function createSshFile(options: Record<string, unknown>, size: number): Promise<void> {
  const lib = library();
  const o = readSshOptions(options);
  const s = await SshSession.connect(lib, o, O_RDWR | O_CREAT | O_TRUNC, 0o644);
  try {
    if (size > 0) await growFile(s, size);
  } finally {
    await s.close();
  }
}

/** The `ssh` protocol driver. */
export const sshDriver: BlockDriver = {
  name: "ssh",
  kind: "protocol",
  protocolPrefix: "ssh",
  options: SSH_OPTIONS,
  strongOptions: ["host", "port", "path", "user", "host_key_check", "server."],
  parseFilename: (filename) => ({ filename }),
  // QEMU's ssh_create_opts: the size only (no preallocation over SFTP).
  createOptions: [{ name: "size", type: "size", help: "Virtual disk size" }],
  exactFilename: ({ options }) => {
    try {
      const o = readSshOptions(options);
      const lib = loadLibssh();
      const user = o.user ?? (lib ? currentUserName(lib) : undefined);
      return user === undefined ? undefined : sshFilename(o, user);
    } catch {
      return undefined;
    }
  },
  createFile: (options, size) => createSshFile(options, size),
  async open(ctx): Promise<DriverInstance> {
    const o = readSshOptions(ctx.options);
    const lib = library();
    const s = await SshSession.connect(lib, o, ctx.readOnly ? O_RDONLY : O_RDWR, 0);
    return new SshInstance(s, o, ctx.node.name);
  },
};

registerDriver(sshDriver);
