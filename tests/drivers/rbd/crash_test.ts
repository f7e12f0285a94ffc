import assert from "node:assert/strict";
import { classify, durabilityOracle, readGuest, replayRecipe } from "../../../filters/crash/mod.ts";
import { createImage, open, runCrashExploration } from "../../../mod.ts";
import { getRecorder } from "../../../filters/recorder.ts";
import { qcow2Structure } from "../../../filters/crash/qcow2.ts";
import { cephConf, imageName, rbdExport, rbdFilename, skipUnlessCeph } from "../../_helpers/ceph.ts";
import { pattern, tempDir } from "../../_helpers/qemu.ts";

const SIZE = 256 * 1024;

Deno.test({
  name: "the crash explorer's recorder under qcow2 on rbd logs exactly what reached the cluster, and every crash state passes the oracles",
  ignore: skipUnlessCeph(),
  async fn() {
    await using dir = await tempDir();
    const conf = await cephConf();
    const image = imageName();
    const name = rbdFilename(conf, image);
    await createImage(name, "qcow2", SIZE, { options: { cluster_size: 4096 } });
    const host = await open({ driver: "recorder", file: { driver: "rbd", filename: name } });
    const base = new Uint8Array(host.length);
    await host.pread(0, base);
    const guest = await open({ driver: "recorder", file: { driver: "qcow2", file: host } });
    try {
      await guest.pwrite(0, pattern(8192, 1));
      await guest.flush();
      await guest.pwrite(65536, pattern(4096, 2));
      await guest.pwrite(4096, pattern(4096, 3), { fua: true });
      await guest.flush();
      await guest.pwrite(200 * 1024, pattern(12288, 4));
    } finally {
      await guest.close();
    }
    const hostLog = [...getRecorder(host).log];
    const guestLog = [...getRecorder(guest).log];
    assert.ok(hostLog.filter((o) => o.op === "flush").length >= 2, "qcow2's flushes reached the rbd node");
    // Every logged op applied in order gives what rbd export reads.
    const end = Math.max(...hostLog.map((o) => o.complete ?? 0)) + 1;
    const all = replayRecipe(base, hostLog, { crashPoint: end, applied: classify(hostLog, end).pending });
    const exported = await rbdExport(conf, image, dir.path);
    assert.equal(exported.length, all.length);
    assert.ok(exported.every((b, i) => b === all[i]), "the host log replays to the exported image");
    const durability = durabilityOracle({ guestLog, guestBase: new Uint8Array(SIZE), read: (b) => readGuest(b, { driver: "qcow2" }) });
    const r = await runCrashExploration(base, hostLog, [{ name: "structure", check: (b) => qcow2Structure(b) }, durability], {
      maxStates: 150,
      extraPoints: guestLog.filter((o) => o.op === "flush").map((o) => o.complete!),
      pointKey: String,
    });
    assert.ok(r.states > 10, `${r.states} states`);
    assert.deepEqual(r.failures.map((f) => `${f.oracle}: ${f.message}`), []);
  },
});
