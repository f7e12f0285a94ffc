/**
 * A private OpenSSH server for the ssh driver's tests: `sshd -D` on
 * 127.0.0.1 as the current user, with a generated host key, one client key
 * in its authorized_keys, and an `ssh-agent` holding that key (libssh's
 * publickey auto authentication asks the agent at `$SSH_AUTH_SOCK`, so the
 * tools under test run as child processes with that variable set). No
 * system sshd, no systemd; `stop()` ends only the two processes started
 * here. Tests skip with a visible `SKIP:` line when OpenSSH or libssh is
 * absent (CI installs openssh-server and openssh-client).
 *
 * @module
 */

import { loadLibssh } from "../../drivers/ssh/_libssh.ts";
import { hasTool, runOk, type RunResult } from "./qemu.ts";

const SSHD = "/usr/sbin/sshd";
const SFTP_SERVER = ["/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server"];
let available: boolean | undefined;

/** Whether a test server can run here (sshd, ssh-keygen, ssh-agent, ssh-add, an sftp-server, libssh through FFI). */
export function hasSshd(): boolean {
  if (available !== undefined) return available;
  available = ["ssh-keygen", "ssh-agent", "ssh-add"].every(hasTool);
  if (available && !exists(SSHD)) {
    console.warn(`SKIP: ${SSHD} is not installed; ssh tests are skipped (CI installs openssh-server)`);
    available = false;
  }
  if (available && !SFTP_SERVER.some(exists)) {
    console.warn("SKIP: no sftp-server found; ssh tests are skipped (CI installs openssh-server)");
    available = false;
  }
  if (available && !loadLibssh()) {
    console.warn("SKIP: libssh.so.4 cannot be loaded; ssh tests are skipped (CI installs libssh-4 with qemu-block-extra)");
    available = false;
  }
  return available;
}

/** `ignore` value for Deno.test: true (skip) without a test server. */
export function skipUnlessSshd(): boolean {
  return !hasSshd();
}

function hasToolQuiet(tool: string): boolean {
  return new Deno.Command("sh", { args: ["-c", `command -v ${tool}`], stdout: "null", stderr: "null" }).outputSync().success;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** A running test server. */
export interface Sshd {
  /** Its port on 127.0.0.1. */
  readonly port: number;
  /** A scratch directory (the keys, config and agent socket live in it; remote files can go there too). */
  readonly dir: string;
  /** The user to log in as (the current one). */
  readonly user: string;
  /** Environment for tools that must authenticate: `SSH_AUTH_SOCK` of the agent holding the client key. */
  readonly env: Record<string, string>;
  /** The host key's hashes in hex (what `host-key-check.mode=hash` takes). */
  readonly hash: { md5: string; sha1: string; sha256: string };
  /** `ssh://USER@127.0.0.1:PORT/PATH` plus a query. */
  url(path: string, query?: string): string;
  /** Runs a command with {@linkcode Sshd.env} added to its environment. */
  run(cmd: string, args: string[]): Promise<RunResult>;
  /**
   * Runs a command as {@linkcode Sshd.run} does, in a private mount namespace
   * where `~/.ssh` is a scratch directory holding `knownHosts` as its
   * `known_hosts` (libssh reads the file of the passwd entry's home, not of
   * `$HOME`): the user's own files are never touched. Undefined where that
   * is not possible (not root, no `unshare`, no `~/.ssh` to mount over).
   */
  runWithKnownHosts(knownHosts: string, cmd: string, args: string[]): Promise<RunResult | undefined>;
  /** The host key as a known_hosts line's key part (`ssh-ed25519 AAAA…`). */
  readonly hostKey: string;
  /** Stops sshd and the agent and removes the directory. */
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

async function hashes(pubKeyFile: string): Promise<Sshd["hash"]> {
  const b64 = (await Deno.readTextFile(pubKeyFile)).split(/\s+/)[1];
  const blob = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const hex = (buf: ArrayBuffer) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
  // WebCrypto has no MD5: ssh-keygen prints it (MD5:aa:bb:...).
  const md5 = (await runOk("ssh-keygen", ["-l", "-E", "md5", "-f", pubKeyFile])).stdout.split(/\s+/)[1].replace(/^MD5:/, "").replaceAll(
    ":",
    "",
  );
  return { md5, sha1: hex(await crypto.subtle.digest("SHA-1", blob)), sha256: hex(await crypto.subtle.digest("SHA-256", blob)) };
}

async function waitForPort(port: number, child: Deno.ChildProcess, log: string): Promise<boolean> {
  let exited = false;
  child.status.then(() => exited = true);
  for (let i = 0; i < 100 && !exited; i++) {
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      // sshd sends its banner first: that it is ours, listening, and not some other server on the port.
      const buf = new Uint8Array(64);
      const n = await c.read(buf);
      c.close();
      if (n && new TextDecoder().decode(buf.subarray(0, n)).startsWith("SSH-2.0-")) return true;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!exited) throw new Error(`sshd did not start listening on port ${port}:\n${await Deno.readTextFile(log).catch(() => "")}`);
  return false;
}

/** Starts a server (a free port is found by trying). */
export async function startSshd(): Promise<Sshd> {
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-sshd-" });
  const user = (await runOk("id", ["-un"])).stdout.trim();
  await runOk("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", `${dir}/host_key`]);
  await runOk("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", `${dir}/id`]);
  await Deno.copyFile(`${dir}/id.pub`, `${dir}/authorized_keys`);
  const sftp = SFTP_SERVER.find(exists)!;
  await Deno.writeTextFile(
    `${dir}/sshd_config`,
    [
      "ListenAddress 127.0.0.1",
      `HostKey ${dir}/host_key`,
      `AuthorizedKeysFile ${dir}/authorized_keys`,
      "StrictModes no",
      "UsePAM no",
      "PidFile none",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      `Subsystem sftp ${sftp}`,
      "LogLevel ERROR",
      "",
    ].join("\n"),
  );
  // As root, sshd wants its privilege separation directory (the openssh-server service makes it at boot).
  if (Deno.uid() === 0 && !exists("/run/sshd")) await Deno.mkdir("/run/sshd", { recursive: true, mode: 0o755 });
  const agentSock = `${dir}/agent.sock`;
  const agent = new Deno.Command("ssh-agent", { args: ["-D", "-a", agentSock], stdout: "null", stderr: "null" }).spawn();
  const procs: Deno.ChildProcess[] = [agent];
  const stopAll = async () => {
    for (const p of procs) {
      try {
        p.kill("SIGTERM");
      } catch { /* exited */ }
      await p.status;
    }
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  try {
    for (let i = 0; i < 50 && !exists(agentSock); i++) await new Promise((r) => setTimeout(r, 20));
    const env = { SSH_AUTH_SOCK: agentSock };
    await new Deno.Command("ssh-add", { args: [`${dir}/id`], env, stdout: "null", stderr: "null" }).output();
    let port = 0;
    for (let attempt = 0; attempt < 10 && !port; attempt++) {
      const p = 20000 + Math.floor(Math.random() * 30000);
      const log = `${dir}/sshd.log`;
      const sshd = new Deno.Command(SSHD, {
        args: ["-D", "-e", "-f", `${dir}/sshd_config`, "-p", String(p), "-E", log],
        stdout: "null",
        stderr: "null",
      })
        .spawn();
      procs.push(sshd);
      if (await waitForPort(p, sshd, log)) port = p;
      else procs.pop();
    }
    if (!port) throw new Error(`sshd would not start:\n${await Deno.readTextFile(`${dir}/sshd.log`).catch(() => "")}`);
    const hash = await hashes(`${dir}/host_key.pub`);
    const hostKey = (await Deno.readTextFile(`${dir}/host_key.pub`)).split(/\s+/).slice(0, 2).join(" ");
    const run = async (cmd: string, args: string[]) => {
      const out = await new Deno.Command(cmd, { args, env, stdin: "null", stdout: "piped", stderr: "piped" }).output();
      const dec = new TextDecoder();
      return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
    };
    const home = (await runOk("sh", ["-c", 'getent passwd "$(id -u)" | cut -d: -f6'])).stdout.trim();
    const overlay = `${dir}/dot-ssh`;
    await Deno.mkdir(overlay);
    const server: Sshd = {
      port,
      dir,
      user,
      env,
      hash,
      url: (path, query) => `ssh://${user}@127.0.0.1:${port}${path}${query ? `?${query}` : ""}`,
      hostKey,
      run,
      runWithKnownHosts: async (knownHosts, cmd, args) => {
        if (Deno.uid() !== 0 || !hasToolQuiet("unshare") || !home || !exists(`${home}/.ssh`)) return undefined;
        await Deno.writeTextFile(`${overlay}/known_hosts`, knownHosts);
        const r = await run("unshare", [
          "-m",
          "sh",
          "-c",
          'mount --bind "$0" "$1/.ssh" && shift && exec "$@"',
          overlay,
          home,
          cmd,
          ...args,
        ]);
        return /mount|unshare/.test(r.stderr) && r.code !== 0 && !r.stdout ? undefined : r;
      },
      stop: stopAll,
      [Symbol.asyncDispose]: stopAll,
    };
    return server;
  } catch (e) {
    await stopAll();
    throw e;
  }
}
