/**
 * qcow2's create and amend option names (one table, `drivers/qcow2/_image_options.ts`)
 * against what qemu-img 7.2 takes: `qemu-img create -f qcow2 -o help` and
 * `qemu-img amend -f qcow2 -o help` list the names; for each, our create and
 * our amend must accept or refuse it as qemu-img does.
 */
import assert from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { parseCreateOptions } from "../../../drivers/qcow2/create.ts";
import { openQcow2, qemuCreate } from "./_util.ts";

const ignore = skipUnless("qemu-img");

/** The option names a `qemu-img ... -o help` listing gives. */
async function qemuNames(args: string[]): Promise<Set<string>> {
  const out = (await runOk("qemu-img", args)).stdout;
  return new Set([...out.matchAll(/^ {2}([a-z0-9_.-]+)=</gm)].map((m) => m[1]));
}

/** A value of the right kind for `name` (amend checks names before values, so any will do there). */
function valueFor(name: string): string {
  return ({ size: "1M", compat: "1.1", refcount_bits: "16", cluster_size: "65536", "encrypt.iter-time": "10" } as Record<string, string>)[
    name
  ] ?? "off";
}

/** qemu-img's names for create and amend of a 1 MiB image at `img`. */
async function qemuLists(img: string): Promise<{ create: Set<string>; amend: Set<string> }> {
  await qemuCreate(img, "1M");
  const create = await qemuNames(["create", "-f", "qcow2", "-o", "help"]);
  const amend = await qemuNames(["amend", "-f", "qcow2", "-o", "help", img]);
  assert.ok(create.size >= 15 && amend.size >= 10, `qemu-img listed ${create.size} create and ${amend.size} amend options`);
  return { create, amend };
}

/** Our create's complaint about the option `name` alone (undefined: none about the name). */
function ourCreateRefusal(name: string): string | undefined {
  try {
    parseCreateOptions(1 << 20, { [name]: valueFor(name) });
  } catch (e) {
    const m = (e as Error).message;
    if (/^Unknown option/.test(m)) return m;
  }
  return undefined;
}

/** Our amend's message for `-o name=value` on a fresh copy of `img` (undefined: it succeeded). */
async function ourAmend(img: string, name: string, copy: string): Promise<string | undefined> {
  await Deno.copyFile(img, copy);
  await using n = await openQcow2(copy);
  try {
    await n.amend({ [name]: valueFor(name) });
  } catch (e) {
    return (e as Error).message;
  }
  return undefined;
}

Deno.test({
  name: "qcow2 every option qemu-img 7.2 takes for both create and amend is accepted by our create and known to our amend",
  ignore,
  fn: async () => {
    await using d = await tempDir();
    const img = `${d.path}/x.qcow2`;
    const { create, amend } = await qemuLists(img);
    const both = [...create].filter((n) => amend.has(n));
    assert.ok(both.includes("lazy_refcounts") && both.includes("encrypt.iter-time"), both.join(", "));
    const wrong: string[] = [];
    for (const name of both) {
      const c = ourCreateRefusal(name);
      if (c) wrong.push(`create ${name}: ${c}`);
      const a = await ourAmend(img, name, `${d.path}/c.qcow2`);
      if (a !== undefined && /^Invalid parameter/.test(a)) wrong.push(`amend ${name}: ${a}`);
    }
    assert.deepEqual(wrong, []);
  },
});

Deno.test({
  name: "qcow2 amend refuses the creation-only options qemu-img 7.2 refuses, with its message, and create refuses amend-only ones",
  ignore,
  fn: async () => {
    await using d = await tempDir();
    const img = `${d.path}/x.qcow2`;
    const { create, amend } = await qemuLists(img);
    const creationOnly = [...create].filter((n) => !amend.has(n));
    assert.ok(creationOnly.includes("cluster_size") && creationOnly.includes("encrypt.format"), creationOnly.join(", "));
    for (const name of creationOnly) {
      const q = await run("qemu-img", ["amend", "-o", `${name}=${valueFor(name)}`, img]);
      assert.notEqual(q.code, 0, `qemu-img amend took ${name}`);
      assert.equal(await ourAmend(img, name, `${d.path}/c.qcow2`), q.stderr.replace(/^qemu-img: /, "").trimEnd(), name);
    }
    const amendOnly = [...amend].filter((n) => !create.has(n));
    assert.ok(amendOnly.includes("encrypt.keyslot"), amendOnly.join(", "));
    for (const name of amendOnly) assert.ok(ourCreateRefusal(name), `our create took ${name}`);
  },
});
