/**
 * Crash safety of luks images: a bounded exploration of every luks workload
 * finds no failing state (header intact and unlocking, every written sector
 * decrypting to a value it held), and the oracles catch lost flushes and a
 * damaged header.
 */

import assert from "node:assert/strict";
import { exploreLuks, LUKS_WORKLOADS, luksHeaderCheck } from "../../../filters/crash/luks.ts";
import type { RunOptions } from "../../../filters/crash/run.ts";
import { exploreQcow2, QCOW2_ENCRYPTED_WORKLOADS, QCOW2_MODES } from "../../../filters/crash/qcow2.ts";
import { tempDir } from "../../_helpers/qemu.ts";

const BOUNDED: RunOptions = { maxStates: 200, maxExhaustive: 8, samples: 12, maxTornCuts: 2, maxFailures: 1, everyK: 1 };

for (const w of LUKS_WORKLOADS) {
  Deno.test(`exploreLuks() finds no failing crash state: ${w.name}`, async () => {
    const r = await exploreLuks(w, { explore: BOUNDED });
    console.log(`${w.name}: ${r.states} states checked (${JSON.stringify(r.checks)})`);
    assert.deepEqual(r.failures.map((f) => `${f.oracle}: ${f.message} ${JSON.stringify(f.replay)}`), []);
    assert.ok(r.states > 10, `explored ${r.states} states`);
  });
}

Deno.test("exploreLuks() catches flushed guest data lost when the host drops flushes", async () => {
  const w = LUKS_WORKLOADS.find((w) => w.name === "luks-overwrite-fua")!;
  const r = await exploreLuks(w, { unsafeHost: true, explore: { maxStates: 300, maxFailures: 10, minimise: false } });
  const durability = r.failures.find((f) => f.oracle === "durability");
  assert.ok(durability, `no durability failure among ${r.states} states`);
  assert.match(durability.message, /guest byte \d+ \(sector \d+\) is 0x/);
});

Deno.test("luksHeaderCheck() rejects a changed header area and a header the passphrase no longer opens", async () => {
  const w = LUKS_WORKLOADS[0];
  const r = await exploreLuks(w, { explore: { maxStates: 1 } });
  const rec = r.recorded;
  const { defineSecret, removeSecret } = await import("../../../core/secrets.ts");
  defineSecret(rec.format.options!["key-secret"] as string, { data: "crash-passphrase-1" });
  try {
    assert.equal(await luksHeaderCheck(rec.base, rec, false), undefined);
    const salt = rec.base.slice();
    salt[208 + 8] ^= 1; // key slot 0's salt: the passphrase derives another key
    assert.match((await luksHeaderCheck(salt, rec, false))!, /header area byte 216 changed/);
    assert.match(
      (await luksHeaderCheck(salt, rec, true))!,
      /the image's passphrase no longer opens it: Invalid password, cannot unlock any keyslot/,
    );
  } finally {
    removeSecret(rec.format.options!["key-secret"] as string);
  }
});

for (const w of QCOW2_ENCRYPTED_WORKLOADS) {
  Deno.test(`exploreQcow2() finds no failing crash state in an encrypted image: ${w.name}`, async () => {
    await using dir = await tempDir();
    for (const mode of QCOW2_MODES) {
      const r = await exploreQcow2(w, mode, { dir: dir.path, recoveryEvery: 3, explore: BOUNDED });
      console.log(`${w.name} × ${mode}: ${r.states} states checked (${JSON.stringify(r.checks)})`);
      assert.deepEqual(r.failures.map((f) => `${mode}: ${f.oracle}: ${f.message} ${JSON.stringify(f.replay)}`), []);
      assert.ok(r.states > 10, `explored ${r.states} states`);
    }
  });
}
