import assert from "node:assert/strict";
import { type BlockError, createImage, open } from "../../../mod.ts";
import { defineSecret, removeSecret } from "../../../core/secrets.ts";
import { cephConf, imageName, rbdCreate, rbdFilename, skipUnlessCeph } from "../../_helpers/ceph.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const ignore = skipUnlessCeph();
const MiB = 1 << 20;

/** The admin key (base64) of the test cluster's keyring. */
async function adminKey(conf: string): Promise<string> {
  const keyring = conf.replace(/ceph\.conf$/, "keyring");
  return (await runOk("ceph-authtool", ["-p", "-n", "client.admin", keyring])).stdout.trim();
}

/** A copy of the cluster's config without its keyring line (auth must come from elsewhere). */
async function confWithoutKeyring(conf: string, dir: string): Promise<string> {
  const text = (await Deno.readTextFile(conf)).split("\n").filter((l) => !/^keyring\s*=/.test(l)).join("\n");
  const path = `${dir}/nokey.conf`;
  await Deno.writeTextFile(path, text);
  return path;
}

/** The monitor's msgr1 port from the cluster's config. */
async function monV1Port(conf: string): Promise<string> {
  const m = /v1:127\.0\.0\.1:(\d+)/.exec(await Deno.readTextFile(conf));
  assert.ok(m, "mon host line");
  return m[1];
}

Deno.test(
  { name: "an unreachable cluster fails within client_mount_timeout, naming the monitor, without stalling the event loop", ignore },
  async () => {
    await using dir = await tempDir();
    // A port nobody listens on: bind one, then free it.
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    const conf = `${dir.path}/dead.conf`;
    await Deno.writeTextFile(conf, `[global]\nmon host = 127.0.0.1:${port}\nauth client required = none\n`);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 20);
    try {
      await assert.rejects(open(`rbd:rbd/x:conf=${conf}:client_mount_timeout=2`, { format: "raw" }), (e: BlockError) => {
        assert.match(e.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
        assert.match(e.message, /timed out \(client_mount_timeout 2 s\)/);
        return true;
      });
    } finally {
      clearInterval(timer);
    }
    assert.ok(ticks > 0, "the event loop ran timers while librados waited for a monitor");
  },
);

Deno.test({ name: "a missing pool, image, snapshot or namespace is ENOENT naming it", ignore }, async () => {
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "1M");
  const cases: [string, RegExp][] = [
    [`rbd:nopool/${image}:conf=${conf}`, /pool 'nopool'.*does not exist/],
    [`rbd:rbd/no-such-image:conf=${conf}`, /no image 'no-such-image' in pool 'rbd'/],
    [`rbd:rbd/${image}@nosnap:conf=${conf}`, new RegExp(`'rbd/${image}@nosnap'.*no snapshot 'nosnap'`)],
    [`rbd:rbd/nons/${image}:conf=${conf}`, /namespace 'nons' in pool 'rbd'.*does not exist/],
  ];
  for (const [name, re] of cases) {
    await assert.rejects(open(name, { format: "raw", readOnly: true }), (e: BlockError) => e.code === "ENOENT" && re.test(e.message), name);
  }
});

Deno.test({
  name: "an rbd snapshot opened read-write is refused with QEMU's 'rbd snapshots are read-only'",
  ignore: ignore || skipUnless("qemu-io"),
}, async () => {
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "1M");
  await runOk("rbd", ["-c", conf, "snap", "create", `rbd/${image}@s1`]);
  const name = rbdFilename(conf, `${image}@s1`);
  await assert.rejects(
    open(name, { format: "raw" }),
    (e: BlockError) => e.code === "EROFS" && /rbd snapshots are read-only/.test(e.message),
  );
  const q = await run("qemu-io", ["-f", "raw", "-c", "read 0 512", name]);
  assert.match(q.stderr, /rbd snapshots are read-only/);
  await using ro = await open(name, { format: "raw", readOnly: true });
  assert.equal(ro.length, MiB);
});

Deno.test({ name: "key-secret authenticates with a key from a secret object, and a wrong key is refused", ignore }, async () => {
  await using dir = await tempDir();
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "1M");
  const noKey = await confWithoutKeyring(conf, dir.path);
  const opts = { driver: "rbd", pool: "rbd", image, conf: noKey, "=keyvalue-pairs": '["client_mount_timeout","2"]' };
  await assert.rejects(open({ ...opts }), /Cannot connect to the Ceph cluster/);
  defineSecret(`rbd-ok-${image}`, { data: await adminKey(conf), format: "base64" });
  defineSecret(`rbd-bad-${image}`, { data: (await runOk("ceph-authtool", ["--gen-print-key"])).stdout.trim(), format: "base64" });
  try {
    await using n = await open({ ...opts, "key-secret": `rbd-ok-${image}` });
    assert.equal(n.length, MiB);
    await assert.rejects(open({ ...opts, "key-secret": `rbd-bad-${image}` }), /Cannot connect to the Ceph cluster/);
    await assert.rejects(open({ ...opts, "key-secret": "no-such-secret" }), /No secret with id 'no-such-secret'/);
  } finally {
    removeSecret(`rbd-ok-${image}`);
    removeSecret(`rbd-bad-${image}`);
  }
});

Deno.test({ name: "server gives the monitors and user the client, with no config file at all", ignore }, async () => {
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "2M");
  defineSecret(`rbd-srv-${image}`, { data: await adminKey(conf), format: "base64" });
  try {
    const spec = {
      driver: "rbd",
      pool: "rbd",
      image,
      conf: "/dev/null",
      user: "admin",
      server: [{ host: "127.0.0.1", port: await monV1Port(conf) }],
      "key-secret": `rbd-srv-${image}`,
    };
    await using n = await open(spec);
    assert.equal(n.length, 2 * MiB);
    assert.match(String((await n.info())["mon-host"]), /127\.0\.0\.1/);
    await assert.rejects(open({ ...spec, user: "nobody", "=keyvalue-pairs": '["client_mount_timeout","2"]' }), /Cannot connect/);
  } finally {
    removeSecret(`rbd-srv-${image}`);
  }
});

Deno.test({ name: "images in a namespace are created, listed by rbd and opened through rbd:pool/ns/image", ignore }, async () => {
  const conf = await cephConf();
  const ns = imageName("ns");
  await runOk("rbd", ["-c", conf, "namespace", "create", "--pool", "rbd", "--namespace", ns]);
  await createImage(`rbd:rbd/${ns}/disk:conf=${conf}`, "raw", MiB);
  assert.deepEqual((await runOk("rbd", ["-c", conf, "ls", `rbd/${ns}`])).stdout.trim().split("\n"), ["disk"]);
  await using n = await open(`rbd:rbd/${ns}/disk:conf=${conf}`, { format: "raw" });
  assert.equal(n.length, MiB);
});

Deno.test({ name: "a bad Ceph option in the filename is a clear EINVAL naming it", ignore }, async () => {
  const conf = await cephConf();
  await assert.rejects(
    open(`rbd:rbd/x:conf=${conf}:no_such_ceph_option=1`, { format: "raw" }),
    (e: BlockError) => e.code === "EINVAL" && /Invalid Ceph option 'no_such_ceph_option'.*no such Ceph option/.test(e.message),
  );
});
