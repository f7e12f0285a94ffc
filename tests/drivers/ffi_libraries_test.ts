import assert from "node:assert/strict";
import { libraryLoader } from "../../drivers/_ffi_libraries.ts";

const GETPID = { getpid: { parameters: [], result: "i32" } } as const;

Deno.test("library loader: opens once and hands out the same merged symbols", () => {
  const loader = libraryLoader<{ getpid(): number }>({
    driver: "demo",
    libraries: [{ file: "libc.so.6", symbols: GETPID }],
    missing: "libc.so.6",
    debianPackage: "libc6",
  });
  const first = loader.load();
  assert.ok(first, loader.error().message);
  assert.deepStrictEqual(first.getpid(), Deno.pid);
  assert.strictEqual(loader.load(), first);
});

Deno.test("library loader: a missing library is ENOTSUP naming the driver, the library and the Debian package", () => {
  const loader = libraryLoader({
    driver: "demo",
    libraries: [{ file: "libc.so.6", symbols: GETPID }, { file: "libblkgraph-missing.so.9", symbols: GETPID }],
    missing: "libblkgraph-missing.so.9",
    debianPackage: "blkgraph-missing9",
  });
  assert.deepStrictEqual(loader.load(), undefined);
  assert.deepStrictEqual(loader.load(), undefined, "the failure is remembered");
  const e = loader.error();
  assert.deepStrictEqual(e.code, "ENOTSUP");
  assert.ok(e.message.startsWith("Driver 'demo' is not available: libblkgraph-missing.so.9 could not be loaded ("), e.message);
  assert.ok(e.message.endsWith("; Debian: apt-get install blkgraph-missing9)"), e.message);
});

Deno.test("library loader: without the FFI permission it says so and never prompts", async () => {
  const code = `
    import { libraryLoader } from ${JSON.stringify(new URL("../../drivers/_ffi_libraries.ts", import.meta.url).href)};
    const l = libraryLoader({ driver: "demo", libraries: [{ file: "libc.so.6", symbols: {} }], missing: "libc.so.6", debianPackage: "libc6" });
    console.log(l.load() === undefined, l.error().message);`;
  const script = await Deno.makeTempFile({ prefix: "blkgraph-ffi-", suffix: ".ts" });
  await Deno.writeTextFile(script, code);
  const out = await new Deno.Command(Deno.execPath(), { args: ["run", "--no-prompt", script], stdout: "piped", stderr: "inherit" })
    .output();
  await Deno.remove(script);
  assert.deepStrictEqual(
    new TextDecoder().decode(out.stdout).trim(),
    "true Driver 'demo' is not available: it needs the FFI permission (--allow-ffi)",
  );
});

/**
 * A child that loads one driver's libraries (`load` is an expression of the imported module `m`), then uses OpenSSL
 * (`RAND_bytes`, which initialises it as libssh's key exchange or Ceph's crypto init do), hands OpenSSL's exit-time cleanup libc's
 * `abort` as a stop handler, and returns normally: exit code 0 when OpenSSL's atexit cleanup is off, 134 when it runs.
 */
async function exitAfterLoading(module: string, load: string): Promise<{ code: number; out: string; err: string }> {
  const code = `
    import * as m from ${JSON.stringify(new URL(module, import.meta.url).href)};
    const loaded = ${load};
    const c = Deno.dlopen("libcrypto.so.3", {
      RAND_bytes: { parameters: ["buffer", "i32"], result: "i32" },
      OPENSSL_atexit: { parameters: ["function"], result: "i32" },
    }).symbols;
    const libc = Deno.dlopen("libc.so.6", { dlsym: { parameters: ["pointer", "buffer"], result: "pointer" } }).symbols;
    const abort = libc.dlsym(null, new TextEncoder().encode("abort\\0"));
    if (!abort || c.RAND_bytes(new Uint8Array(16), 16) !== 1 || c.OPENSSL_atexit(abort) !== 1) throw new Error("no OpenSSL stop handler");
    console.log(Boolean(loaded));`;
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-ffi-exit-" });
  try {
    const script = `${dir}/child.ts`;
    await Deno.writeTextFile(script, code);
    // The child's working directory is the temporary one: an abort may leave a core file there.
    const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", script], cwd: dir, stdout: "piped", stderr: "piped" })
      .output();
    const dec = new TextDecoder();
    return { code: out.code, out: dec.decode(out.stdout).trim(), err: dec.decode(out.stderr) };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function hasLibrary(file: string): boolean {
  try {
    Deno.dlopen(file, {}).close();
    return true;
  } catch {
    console.warn(`SKIP: ${file} is not installed; the exit-time OpenSSL tests that need it are skipped (CI installs it)`);
    return false;
  }
}

const noCrypto = !hasLibrary("libcrypto.so.3");

Deno.test({
  name: "the OpenSSL exit probe: a process that never loads a driver's library runs OpenSSL's exit-time cleanup",
  ignore: noCrypto,
}, async () => {
  const r = await exitAfterLoading("../../drivers/_ffi_libraries.ts", "typeof m.libraryLoader");
  assert.deepStrictEqual([r.code, r.out], [134, "true"], r.err);
});

for (
  const [driver, module, load, lib] of [
    ["ssh", "../../drivers/ssh/_libssh.ts", "m.loadLibssh()", "libssh.so.4"],
    ["rbd", "../../drivers/rbd/_librbd.ts", "m.loadLibrbd()", "librbd.so.1"],
    ["luks (OpenSSL ciphers)", "../../drivers/_crypto/_openssl.ts", "m.openSslAvailable()", "libcrypto.so.3"],
  ]
) {
  Deno.test({
    name:
      `${driver}: loading its libraries turns off OpenSSL's exit-time cleanup, which races worker threads freeing their OpenSSL state at exit`,
    ignore: noCrypto || !hasLibrary(lib),
  }, async () => {
    const r = await exitAfterLoading(module, load);
    assert.deepStrictEqual([r.code, r.out], [0, "true"], r.err);
  });
}
