/**
 * Key slot management (qemu-img amend for luks): adding and erasing
 * passphrases through `BlockNode.amend`, its refusals, and a replay of
 * QEMU's iotest 293 steps through `blkgraph amend` and `qemu-img amend` on
 * two copies of one image, checking after each step that both tools agree
 * on success and on which passphrases still open the image.
 */

import assert from "node:assert/strict";
import { BlockError } from "../../../core/errors.ts";
import { LUKS_KEY_DISABLED } from "../../../drivers/_crypto/luks_header.ts";
import { skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { cli } from "../../cli/_run.ts";
import { createLuks, dropTestSecrets, openLuks, QEMU_SECRETS, qemuCreateLuks, qemuImgKeyslots, qemuIoLuks, qemuSpec } from "./_util.ts";

const MiB = 1 << 20;

async function opens(path: string, secret: string): Promise<boolean> {
  try {
    await (await openLuks(path, secret, true)).close();
    return true;
  } catch (e) {
    if (e instanceof BlockError && e.code === "EACCES") return false;
    throw e;
  }
}

async function amend(path: string, options: Record<string, string | number>, secret = "sec0", force = false): Promise<void> {
  await using node = await openLuks(path, secret);
  await node.amend(options, { force });
}

async function fresh(dir: string): Promise<string> {
  const path = `${dir}/a.luks`;
  await createLuks(path, MiB);
  return path;
}

Deno.test("amend state=active adds new-secret to the first free slot; every passphrase opens the image", async () => {
  await using dir = await tempDir();
  const path = await fresh(dir.path);
  await amend(path, { state: "active", "new-secret": "sec1", "iter-time": 10 });
  await amend(path, { state: "active", "new-secret": "sec2", "iter-time": 10, keyslot: 5 }, "sec1");
  await using node = await openLuks(path, "sec2", true);
  const slots = ((await node.info())["format-specific"] as { data: { slots: { active: boolean }[] } }).data.slots;
  assert.deepEqual(slots.map((s) => s.active), [true, true, false, false, false, true, false, false]);
  for (const s of ["sec0", "sec1", "sec2"]) assert.ok(await opens(path, s), s);
  assert.equal(await opens(path, "sec3"), false);
});

Deno.test("amend refuses to overwrite an active key slot unless forced", async () => {
  await using dir = await tempDir();
  const path = await fresh(dir.path);
  await assert.rejects(
    amend(path, { state: "active", "new-secret": "sec1", keyslot: 0, "iter-time": 10 }),
    /Refusing to overwrite active keyslot 0 - please erase it first/,
  );
  await amend(path, { state: "active", "new-secret": "sec1", keyslot: 0, "iter-time": 10 }, "sec0", true);
  assert.ok(await opens(path, "sec1"));
  assert.equal(await opens(path, "sec0"), false);
});

Deno.test("amend state=inactive erases a slot: its descriptor is cleared and its key material overwritten", async () => {
  await using dir = await tempDir();
  const path = await fresh(dir.path);
  await amend(path, { state: "active", "new-secret": "sec1", "iter-time": 10 });
  const before = await Deno.readFile(path);
  await amend(path, { state: "inactive", keyslot: 0 }, "sec1");
  const after = await Deno.readFile(path);
  await using node = await openLuks(path, "sec1", true);
  const { LuksInstance } = await import("../../../drivers/luks/luks.ts");
  const inst = node.instance as InstanceType<typeof LuksInstance>;
  const slot = inst.volume.header.keyslots[0];
  assert.equal(slot.active, LUKS_KEY_DISABLED);
  assert.equal(slot.iterations, 0);
  assert.ok(slot.salt.every((b) => b === 0));
  const material = [4096, 4096 + 256000] as const;
  let same = 0;
  for (let i = material[0]; i < material[1]; i++) if (before[i] === after[i]) same++;
  assert.ok(same < 2000, `key material overwritten (${same} of 256000 bytes unchanged, about 1000 expected by chance)`);
  assert.equal(await opens(path, "sec0"), false);
});

Deno.test("amend refuses to erase the last active slot (by index or by passphrase) unless forced", async () => {
  await using dir = await tempDir();
  const path = await fresh(dir.path);
  await assert.rejects(
    amend(path, { state: "inactive", keyslot: 0 }),
    /Attempt to erase the only active keyslot 0 which will erase all the data/,
  );
  await assert.rejects(amend(path, { state: "inactive", "old-secret": "sec0" }), /All the active keyslots match the \(old\) password/);
  await assert.rejects(
    amend(path, { state: "inactive", "old-secret": "sec1" }),
    /No keyslots match given \(old\) password for erase operation/,
  );
  await assert.rejects(amend(path, { state: "inactive", keyslot: 3 }), /Given keyslot 3 is already erased \(inactive\)/);
  await amend(path, { state: "inactive", keyslot: 0 }, "sec0", true);
  await assert.rejects(openLuks(path), /Invalid password, cannot unlock any keyslot/);
});

Deno.test("amend state=inactive old-secret erases every slot holding that passphrase", async () => {
  await using dir = await tempDir();
  const path = await fresh(dir.path);
  for (let i = 0; i < 2; i++) await amend(path, { state: "active", "new-secret": "sec1", "iter-time": 10 });
  await amend(path, { state: "active", "new-secret": "sec2", "iter-time": 10 });
  await amend(path, { state: "inactive", "old-secret": "sec1" });
  assert.equal(await opens(path, "sec1"), false);
  assert.ok(await opens(path, "sec0"));
  assert.ok(await opens(path, "sec2"));
});

Deno.test("amend with all eight slots in use refuses to add another", async () => {
  await using dir = await tempDir();
  const path = await fresh(dir.path);
  for (let i = 1; i < 8; i++) await amend(path, { state: "active", "new-secret": "sec1", "iter-time": 10 });
  await assert.rejects(
    amend(path, { state: "active", "new-secret": "sec2", "iter-time": 10 }),
    /Can't add a keyslot - all keyslots are in use/,
  );
});

Deno.test("amend names wrong option combinations as qemu-img does", async () => {
  await using dir = await tempDir();
  const path = await fresh(dir.path);
  const cases: [Record<string, string | number>, RegExp][] = [
    [{ "new-secret": "sec1" }, /Parameter 'state' is missing/],
    [{ state: "on" }, /Parameter 'state' does not accept value 'on'/],
    [{ state: "active" }, /'new-secret' is required to activate a keyslot/],
    [{ state: "active", "new-secret": "sec1", "old-secret": "sec0" }, /'old-secret' must not be given when activating keyslots/],
    [{ state: "inactive", "new-secret": "sec1" }, /'new-secret' must not be given when erasing keyslots/],
    [{ state: "inactive", keyslot: 1, "iter-time": 10 }, /'iter-time' must not be given when erasing keyslots/],
    [{ state: "inactive" }, /either explicit keyslot index or the password currently contained in them must be given/],
    [{ state: "active", "new-secret": "sec1", keyslot: 8 }, /Invalid keyslot 8 specified, must be between 0 and 7/],
    [{ state: "inactive", keyslot: 0, "old-secret": "sec1" }, /Given keyslot 0 doesn't contain the given old password for erase operation/],
    [{ state: "active", "new-secret": "nope" }, /No secret with id 'nope' found \(named by option 'new-secret'\)/],
    [{ state: "active", cipher: "aes" }, /Invalid parameter 'cipher'/],
  ];
  for (const [o, msg] of cases) await assert.rejects(amend(path, o), msg, JSON.stringify(o));
  await using ro = await openLuks(path, "sec0", true);
  await assert.rejects(ro.amend({ state: "active", "new-secret": "sec1" }), (e: unknown) => e instanceof BlockError && e.code === "EROFS");
});

/** iotest 293's steps: [secret used to open, -o options, --force]. */
const STEPS: [string, string, boolean][] = [
  ["sec0", "state=active,new-secret=sec3,iter-time=10,keyslot=4", false],
  ["sec0", "state=active,new-secret=sec1,iter-time=10", false],
  ["sec1", "state=active,new-secret=sec2,iter-time=10,keyslot=3", false],
  ["sec1", "state=inactive,keyslot=4", false],
  ["sec1", "state=inactive,old-secret=sec0", false],
  ["sec1", "state=inactive,keyslot=3", false],
  ["sec1", "state=active,new-secret=sec2,iter-time=10", false],
  ["sec1", "state=active,new-secret=sec0,iter-time=10", false],
  ["sec2", "state=inactive,old-secret=sec1", false],
  ["sec2", "state=inactive,old-secret=sec2", false],
  ["sec0", "state=active,new-secret=sec1,keyslot=0", false],
  ["sec0", "state=active,new-secret=sec1,iter-time=10,keyslot=0", true],
  ["sec1", "state=inactive,keyslot=0", false],
  ["sec1", "state=inactive,old-secret=sec3", true],
  ["sec1", "state=inactive,keyslot=1", true],
];

Deno.test({
  name: "blkgraph amend and qemu-img amend agree step by step on iotest 293's key slot sequence",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    dropTestSecrets();
    await using dir = await tempDir();
    const theirs = `${dir.path}/q.luks`;
    const ours = `${dir.path}/b.luks`;
    await qemuCreateLuks(theirs, MiB);
    await Deno.copyFile(theirs, ours);
    const opensIn = async (p: string) => {
      const out: string[] = [];
      for (const s of ["sec0", "sec1", "sec2", "sec3"]) if (!(await qemuIoLuks(p, s, "read 0 512")).includes("can't open")) out.push(s);
      return out;
    };
    for (const [secret, o, force] of STEPS) {
      const args = ["amend", ...QEMU_SECRETS, "--image-opts", qemuSpec(theirs, secret), "-o", o, ...(force ? ["--force"] : [])];
      const q = await qemuImgKeyslots(args);
      const b = await cli(["amend", ...QEMU_SECRETS, "--image-opts", qemuSpec(ours, secret), "-o", o, ...(force ? ["--force"] : [])]);
      const step = `${secret}: -o ${o}${force ? " --force" : ""}`;
      assert.equal(b.code === 0, q.code === 0, `${step}: qemu-img ${q.code} ${q.stderr} / blkgraph ${b.code} ${b.stderr}`);
      assert.deepEqual(await opensIn(ours), await opensIn(theirs), `${step}: the same passphrases open both images`);
    }
  },
});
