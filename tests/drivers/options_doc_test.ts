/**
 * Driver options are documented in one place: drivers/README.md describes
 * every option each registered driver declares (`BlockDriver.options`), and
 * the declared list is the one the driver enforces.
 */

import assert from "node:assert/strict";
import { BlockError, createImage, driverNames, getDriver, open } from "../../mod.ts";

const readme = await Deno.readTextFile(new URL("../../drivers/README.md", import.meta.url));

/** The README's section for `driver`: from its `### \`name\`` heading to the next heading. */
function section(driver: string): string | undefined {
  const start = readme.indexOf("### `" + driver + "`");
  if (start < 0) return undefined;
  const next = readme.slice(start + 1).search(/\n##/);
  return next < 0 ? readme.slice(start) : readme.slice(start, start + 1 + next);
}

/** Every driver a user can name (x- drivers are the project's own test scaffolding). */
const userDrivers = () => driverNames().filter((n) => !n.startsWith("x-"));

Deno.test("every driver a user can name declares its options", () => {
  const undeclared = userDrivers().filter((n) => getDriver(n).options === undefined);
  assert.deepEqual(undeclared, []);
});

Deno.test("drivers/README.md describes every option of every driver", () => {
  const missing: string[] = [];
  for (const name of userDrivers()) {
    const text = section(name);
    if (text === undefined) {
      missing.push(`${name}: no section`);
      continue;
    }
    for (const opt of getDriver(name).options ?? []) if (!text.includes("`" + opt + "`")) missing.push(`${name}.${opt}`);
  }
  assert.deepEqual(missing, []);
});

/** The list an unknown option's EINVAL gives, when opening `spec` with one. */
async function enforced(spec: Record<string, unknown>): Promise<string[]> {
  try {
    await (await open({ ...spec, "x-no-such-option": 1 })).close();
  } catch (e) {
    assert.ok(e instanceof BlockError, String(e));
    assert.equal(e.code, "EINVAL", e.message);
    const m = /known options: ([^)]*)\)/.exec(e.message);
    assert.ok(m, e.message);
    return m[1] === "none" ? [] : m[1].split(", ");
  }
  throw new Error(`${spec.driver} accepted an unknown option`);
}

Deno.test("the options a driver declares are the ones it accepts", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const qcow2 = `${dir}/d.qcow2`;
    await createImage(qcow2, "qcow2", 1 << 20);
    const mem = { driver: "memory", size: 1 << 20 };
    const specs: Record<string, unknown>[] = [
      mem,
      { driver: "file", filename: qcow2 },
      { driver: "host_device", filename: "/dev/zero", locking: "off" },
      { driver: "raw", file: mem },
      { driver: "qcow2", file: { driver: "file", filename: qcow2 } },
      { driver: "luks", file: mem },
      { driver: "nbd", server: { type: "unix", path: `${dir}/none.sock` } },
      { driver: "blkdebug", image: mem },
      { driver: "throttle", file: mem },
      { driver: "recorder", file: mem },
    ];
    for (const spec of specs) {
      const name = String(spec.driver);
      assert.deepEqual((await enforced(spec)).sort(), [...getDriver(name).options!].sort(), name);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
