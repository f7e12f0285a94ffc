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
