/**
 * The OpenSSL path of the sector cipher (`drivers/_crypto/_openssl.ts`):
 * byte-identical to the portable `node:crypto` + JavaScript path for every
 * mode, key size and IV generator, falls back where OpenSSL cannot be used
 * (equal XTS key halves, no `ffi` permission), and refuses use after
 * destroy. The cryptsetup and qemu-img cross-checks (interop_test.ts,
 * tests/drivers/qcow2/encrypt_test.ts) run on whichever path is active.
 */

import assert from "node:assert/strict";
import nodeCrypto from "node:crypto";
import type { CipherAlg, CipherMode, CipherSpec, IvgenAlg } from "../../../drivers/_crypto/algorithms.ts";
import { openSslAvailable } from "../../../drivers/_crypto/_openssl.ts";
import { SectorCipher } from "../../../drivers/_crypto/sector_cipher.ts";
import { CipherPool, WRITE_SPLIT_MIN } from "../../../drivers/_crypto/cipher_pool.ts";

const available = openSslAvailable();
if (!available) console.log("SKIP: OpenSSL's libcrypto cannot be loaded here: the OpenSSL-path comparisons do not run");

const SPECS: CipherSpec[] = [];
for (const mode of ["xts", "cbc", "ctr", "ecb"] as CipherMode[]) {
  for (const alg of ["aes-128", "aes-192", "aes-256"] as CipherAlg[]) {
    if (mode === "xts" && alg === "aes-192") continue; // neither QEMU nor OpenSSL has it
    for (const ivgen of ["plain", "plain64", "essiv"] as IvgenAlg[]) {
      if (mode === "ecb" && ivgen !== "plain64") continue;
      SPECS.push({ alg, mode, ivgen, ivgenHash: ivgen === "essiv" ? "sha256" : undefined });
    }
  }
}

function keyFor(spec: CipherSpec): Uint8Array {
  const n = { "aes-128": 16, "aes-192": 24, "aes-256": 32 }[spec.alg] * (spec.mode === "xts" ? 2 : 1);
  return new Uint8Array(nodeCrypto.randomBytes(n));
}

for (const spec of SPECS) {
  const name = `${spec.alg}-${spec.mode}-${spec.ivgen}`;
  Deno.test({
    name: `SectorCipher ${name} through OpenSSL gives the portable path's bytes`,
    ignore: !available,
    fn() {
      const key = keyFor(spec);
      const native = new SectorCipher(spec, key);
      const portable = new SectorCipher(spec, key, { native: false });
      assert.equal(native.native, true, "OpenSSL is used");
      assert.equal(portable.native, false);
      // Past 2^32 (plain truncates, plain64 does not), across the 64 KiB chunk, an odd byte offset.
      for (const [first, n] of [[0, 1], [2 ** 32 - 3, 6], [1000, 300]]) {
        const backing = new Uint8Array(n * 512 + 1);
        const data = backing.subarray(1);
        nodeCrypto.randomFillSync(data);
        const plain = data.slice();
        const want = plain.slice();
        portable.encrypt(want, first);
        native.encrypt(data, first);
        assert.deepEqual(data, want, `sectors ${first}.. encrypt alike`);
        native.decrypt(data, first);
        assert.deepEqual(data, plain, "OpenSSL decrypts the portable ciphertext");
      }
      native.destroy();
      portable.destroy();
    },
  });
}

Deno.test("SectorCipher.encryptTo() writes encrypt()'s bytes to the output and leaves the input as it is, on both paths", () => {
  const spec: CipherSpec = { alg: "aes-256", mode: "xts", ivgen: "plain64" };
  const key = keyFor(spec);
  for (const native of [true, false]) {
    const c = new SectorCipher(spec, key, { native });
    const src = new Uint8Array(nodeCrypto.randomBytes(200 * 512));
    const keep = src.slice();
    const want = src.slice();
    c.encrypt(want, 33);
    const out = new Uint8Array(src.length + 1).subarray(1);
    c.encryptTo(src, out, 33);
    assert.deepEqual(out, want, `native=${native}: ciphertext`);
    assert.deepEqual(src, keep, `native=${native}: input untouched`);
    assert.throws(() => c.encryptTo(src, new Uint8Array(512), 33), /Output of 512 bytes for 102400 bytes/);
    c.destroy();
  }
});

Deno.test("CipherPool.encryptTo() gives the calling thread's ciphertext below and above the split size", async () => {
  const spec: CipherSpec = { alg: "aes-256", mode: "xts", ivgen: "plain64" };
  const key = keyFor(spec);
  const pool = new CipherPool(spec, key, { threads: 1 });
  const local = new SectorCipher(spec, key);
  try {
    for (const n of [4096, WRITE_SPLIT_MIN, 3 * WRITE_SPLIT_MIN + 512]) {
      const src = new Uint8Array(nodeCrypto.randomBytes(n));
      const keep = src.slice();
      const want = src.slice();
      local.encrypt(want, 5);
      const out = new Uint8Array(n);
      await pool.encryptTo(src, out, 5);
      assert.deepEqual(out, want, `${n} bytes`);
      assert.deepEqual(src, keep);
    }
  } finally {
    await pool.close();
    local.destroy();
  }
});

Deno.test({
  name: "SectorCipher keeps to the portable path when OpenSSL refuses the key (XTS with equal halves)",
  ignore: !available,
  fn() {
    const c = new SectorCipher({ alg: "aes-256", mode: "xts", ivgen: "plain64" }, new Uint8Array(64).fill(9));
    assert.equal(c.native, false);
    const data = new Uint8Array(1024).fill(1);
    c.encrypt(data, 4);
    c.decrypt(data, 4);
    assert.deepEqual(data, new Uint8Array(1024).fill(1));
    c.destroy();
  },
});

Deno.test({
  name: "SectorCipher through OpenSSL refuses use after destroy",
  ignore: !available,
  fn() {
    const c = new SectorCipher(
      { alg: "aes-256", mode: "xts", ivgen: "plain64" },
      keyFor({ alg: "aes-256", mode: "xts", ivgen: "plain64" }),
    );
    assert.equal(c.native, true);
    c.destroy();
    assert.throws(() => c.decrypt(new Uint8Array(512), 0), /destroyed/);
  },
});

Deno.test("SectorCipher without the ffi permission uses the portable path, with no permission prompt", async () => {
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-openssl-" });
  try {
    const script = `${dir}/probe.ts`;
    const mod = new URL("../../../drivers/_crypto/sector_cipher.ts", import.meta.url).href;
    await Deno.writeTextFile(
      script,
      `import { SectorCipher } from ${JSON.stringify(mod)};\n` +
        `const key = crypto.getRandomValues(new Uint8Array(64));\n` +
        `const c = new SectorCipher({ alg: "aes-256", mode: "xts", ivgen: "plain64" }, key);\n` +
        `const d = new Uint8Array(4096).fill(5); c.encrypt(d, 1); const changed = d.some((b) => b !== 5); c.decrypt(d, 1);\n` +
        `console.log(JSON.stringify({ native: c.native, changed, back: d.every((b) => b === 5) }));\n`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", "--no-lock", "--no-config", `--allow-read=${dir}`, script],
      stdin: "null",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.equal(out.success, true, new TextDecoder().decode(out.stderr));
    assert.deepEqual(JSON.parse(text), { native: false, changed: true, back: true });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
