import assert from "node:assert/strict";
import { BlockError, open } from "../../mod.ts";
import { getBlkdebug, parseBlkdebugConfig } from "../../filters/blkdebug.ts";
import { skipUnless } from "../_helpers/qemu.ts";

function rejectsWith(fn: () => unknown, code: string, text: string): void {
  assert.throws(fn, (e: unknown) => e instanceof BlockError && e.code === code && e.message.includes(text));
}

Deno.test("parseBlkdebugConfig() reads [inject-error] and [set-state] sections with quoted values", () => {
  const rules = parseBlkdebugConfig(
    [
      "[inject-error]",
      'event = "l2_update"',
      'errno = "28"',
      'state = "2"',
      'sector = "8"',
      'once = "on"',
      'immediately = "on"',
      'iotype = "write"',
      "",
      "[set-state]",
      'event = "l1_update"',
      'state = "1"',
      'new_state = "2"',
    ].join("\n"),
  );
  assert.deepEqual(rules, [
    { action: "inject-error", event: "l2_update", state: 2, code: "ENOSPC", offset: 4096, once: true, immediately: true, iotypeMask: 2 },
    { action: "set-state", event: "l1_update", state: 1, newState: 2 },
  ]);
});

Deno.test("parseBlkdebugConfig() accepts bare values, comments and defaults", () => {
  const rules = parseBlkdebugConfig("# a comment\n  # indented comment\n[inject-error]\nevent = l2_load # why\n\nerrno=EIO\n");
  assert.deepEqual(rules, [
    { action: "inject-error", event: "l2_load", state: 0, code: "EIO", offset: -1, once: false, immediately: false, iotypeMask: 31 },
  ]);
});

Deno.test("parseBlkdebugConfig() names an unknown key", () => {
  rejectsWith(() => parseBlkdebugConfig('[inject-error]\nevent = "l2_load"\nbogus = "1"\n', "x.cfg"), "EINVAL", "unknown key 'bogus'");
  rejectsWith(() => parseBlkdebugConfig('[set-state]\nevent = "l2_load"\nerrno = "5"\n'), "EINVAL", "unknown key 'errno'");
});

Deno.test("parseBlkdebugConfig() names an unknown event", () => {
  rejectsWith(() => parseBlkdebugConfig('[inject-error]\nevent = "l2_lode"\n', "x.cfg"), "EINVAL", "unknown event 'l2_lode'");
  rejectsWith(() => parseBlkdebugConfig("[inject-error]\nerrno = 5\n"), "EINVAL", "missing 'event'");
});

Deno.test("parseBlkdebugConfig() names an unknown section, iotype and errno", () => {
  rejectsWith(() => parseBlkdebugConfig('[suspend]\nevent = "l2_load"\n'), "EINVAL", "unknown section [suspend]");
  rejectsWith(() => parseBlkdebugConfig('[inject-error]\nevent = "l2_load"\niotype = "trim"\n'), "EINVAL", "unknown iotype 'trim'");
  rejectsWith(() => parseBlkdebugConfig('[inject-error]\nevent = "l2_load"\nerrno = "EWHAT"\n'), "EINVAL", "unknown errno 'EWHAT'");
  rejectsWith(() => parseBlkdebugConfig('event = "l2_load"\n', "c.cfg"), "EINVAL", "c.cfg line 1");
});

Deno.test("blkdebug opens rules from a config file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cfg = `${dir}/blkdebug.cfg`;
    await Deno.writeTextFile(cfg, '[inject-error]\nevent = "l2_update"\nerrno = "28"\n');
    await using img = await open({ driver: "raw", file: { driver: "blkdebug", config: cfg, image: { driver: "memory", size: 65536 } } });
    await img.event("l2_update");
    await assert.rejects(img.pwrite(0, new Uint8Array(512)), { code: "ENOSPC" });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("blkdebug reports a missing config file", async () => {
  await assert.rejects(
    open({ driver: "blkdebug", config: "/nonexistent/blkdebug.cfg", image: { driver: "memory", size: 4096 } }),
    (e: unknown) => e instanceof BlockError && e.message.includes("Could not read blkdebug config file '/nonexistent/blkdebug.cfg'"),
  );
});

Deno.test("blkdebug:CONFIG:IMAGE is a protocol layer: the format (raw here) is probed over it, as in QEMU", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cfg = `${dir}/b.cfg`;
    const imgPath = `${dir}/disk.img`;
    await Deno.writeTextFile(cfg, '[inject-error]\nevent = "l1_update"\niotype = "read"\n');
    await Deno.writeFile(imgPath, new Uint8Array(8192).fill(7));
    await using node = await open(`blkdebug:${cfg}:${imgPath}`);
    assert.equal(node.driver.name, "raw");
    assert.equal(node.file?.driver.name, "blkdebug");
    assert.equal(node.file?.primaryChild?.driver.name, "file");
    assert.equal(node.length, 8192);
    const buf = new Uint8Array(512);
    await node.pread(0, buf);
    assert.equal(buf[0], 7);
    await node.debugEvent("l1_update");
    await assert.rejects(node.pread(0, buf), { code: "EIO" });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("blkdebug::IMAGE (empty config) opens without rules", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/d.img`, new Uint8Array(4096));
    await using node = await open(`blkdebug::${dir}/d.img`);
    assert.equal(getBlkdebug(node).state, 1);
    await assert.rejects(open(`blkdebug:${dir}/d.img`), { code: "EINVAL" });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("blkdebug takes inline rules from an object spec", async () => {
  await using img = await open({
    driver: "raw",
    file: {
      driver: "blkdebug",
      "inject-error": [{ event: "l2_load", errno: 5, iotype: "read" }],
      "set-state": [{ event: "l2_load", state: 1, new_state: 3 }],
      image: { driver: "memory", size: 65536 },
    },
  });
  await img.event("l2_load");
  assert.equal(getBlkdebug(img).state, 3);
  await assert.rejects(img.pread(0, new Uint8Array(512)), { code: "EIO" });
});

Deno.test("blkdebug takes inline rules from a dotted spec", async () => {
  await using img = await open(
    "driver=raw,file.driver=blkdebug,file.inject-error.0.event=l2_update,file.inject-error.0.errno=ENOSPC," +
      "file.inject-error.1.event=l1_update,file.image.driver=memory,file.image.size=64k",
  );
  await img.event("l1_update");
  await assert.rejects(img.pwrite(0, new Uint8Array(512)), { code: "EIO" });
  await img.event("l2_update");
  await assert.rejects(img.pwrite(0, new Uint8Array(512)), { code: "ENOSPC" });
});

Deno.test("blkdebug takes inline rules from a json: filename", async () => {
  const spec = {
    driver: "raw",
    "file.driver": "blkdebug",
    "file.inject-error": [{ event: "cluster_alloc", errno: "28", once: true }],
    "file.image": { driver: "memory", size: 65536 },
  };
  await using img = await open(`json:${JSON.stringify(spec)}`);
  await img.event("cluster_alloc");
  await assert.rejects(img.pwrite(0, new Uint8Array(512)), { code: "ENOSPC" });
  await img.pwrite(0, new Uint8Array(512));
});

Deno.test("blkdebug rejects unknown options and bad rule lists", async () => {
  await assert.rejects(open({ driver: "blkdebug", colour: "red", image: { driver: "memory" } }), /Unknown option 'colour'/);
  await assert.rejects(
    open({ driver: "blkdebug", "inject-error": [{ event: "nope" }], image: { driver: "memory" } }),
    /unknown event 'nope'/,
  );
  await assert.rejects(open({ driver: "blkdebug", "inject-error": ["x"], image: { driver: "memory" } }), /inject-error\.0/);
});

Deno.test("parseBlkdebugConfig() accepts QEMU's older dotted event spellings", () => {
  const rules = parseBlkdebugConfig(
    '[inject-error]\nevent = "refblock_alloc.hookup"\n[set-state]\nevent = "l1_grow.alloc_table"\nnew_state = 2\n',
  );
  assert.deepEqual(rules.map((r) => r.event), ["refblock_alloc_hookup", "l1_grow_alloc_table"]);
});

Deno.test("open(blkdebug:CONFIG:IMAGE, {format}) puts the format over the blkdebug node", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/c.cfg`, '[inject-error]\nevent = "l2_update"\nerrno = "28"\n');
    await Deno.writeFile(`${dir}/d.img`, new Uint8Array(4096));
    await using img = await open(`blkdebug:${dir}/c.cfg:${dir}/d.img`, { format: "raw" });
    assert.equal(img.driver.name, "raw");
    assert.equal(img.file?.driver.name, "blkdebug");
    await img.event("l2_update");
    await assert.rejects(img.pwrite(0, new Uint8Array(512)), { code: "ENOSPC" });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function outcomes(cfg: string, cmds: [string, number, number][], ours: boolean): Promise<string[]> {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/c.cfg`, cfg);
    await Deno.writeFile(`${dir}/d.img`, new Uint8Array(65536));
    const target = `blkdebug:${dir}/c.cfg:${dir}/d.img`;
    if (!ours) {
      const args = ["-f", "raw", ...cmds.flatMap(([op, off, len]) => ["-c", `${op} ${off} ${len}`]), target];
      const out = new TextDecoder().decode((await new Deno.Command("qemu-io", { args, stdout: "piped", stderr: "piped" }).output()).stdout);
      return out.split("\n").filter((l) => /^(wrote|read) |failed:/.test(l)).map((l) => (/failed: (.*)$/.exec(l)?.[1] ?? "ok"));
    }
    // qemu-io opens images writethrough by default.
    await using img = await open(target, { format: "raw", cache: "writethrough" });
    const res: string[] = [];
    for (const [op, off, len] of cmds) {
      const p = op === "write" ? img.pwrite(off, new Uint8Array(len)) : img.pread(off, new Uint8Array(len));
      res.push(await p.then(() => "ok", (e: BlockError) => e.strerror));
    }
    return res;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const differential: [string, string, [string, number, number][]][] = [
  ["once", '[inject-error]\nevent = "pwritev"\nerrno = "28"\nonce = "on"\n', [["write", 0, 512], ["write", 0, 512], ["read", 0, 512]]],
  ["sector", '[inject-error]\nevent = "pwritev"\nsector = "8"\n', [["write", 0, 512], ["write", 4096, 512], ["read", 4096, 512], [
    "read",
    0,
    512,
  ]]],
  ["iotype", '[inject-error]\nevent = "pwritev_done"\niotype = "read"\nerrno = "13"\n', [["read", 0, 512], ["write", 0, 512], [
    "read",
    0,
    512,
  ], ["write", 512, 512]]],
  [
    "state",
    '[inject-error]\nevent = "pwritev_done"\nstate = "2"\n[set-state]\nevent = "pwritev_done"\nstate = "1"\nnew_state = "2"\n',
    [["write", 0, 512], ["read", 0, 512], ["write", 0, 512], ["read", 0, 512]],
  ],
  [
    "set-state runs after the inject rules of the same event",
    '[inject-error]\nevent = "pwritev"\nstate = "1"\nerrno = "28"\nonce = "on"\n[inject-error]\nevent = "pwritev"\nstate = "2"\nerrno = "13"\n' +
    '[set-state]\nevent = "pwritev"\nstate = "1"\nnew_state = "2"\n',
    [["write", 0, 512], ["write", 0, 512], ["read", 0, 512], ["write", 0, 512]],
  ],
  [
    "two inject rules armed by one event",
    '[inject-error]\nevent = "pwritev"\nerrno = "28"\nonce = "on"\n[inject-error]\nevent = "pwritev"\nerrno = "13"\nonce = "on"\n',
    [["write", 0, 512], ["write", 0, 512], ["write", 0, 512], ["read", 0, 512]],
  ],
  [
    "an event's inject rules replace the ones an earlier event armed",
    '[inject-error]\nevent = "pwritev"\niotype = "read"\nerrno = "28"\n[inject-error]\nevent = "read_aio"\niotype = "write"\nerrno = "13"\n',
    [["write", 0, 512], ["read", 0, 512], ["write", 0, 512], ["read", 0, 512], ["read", 0, 512]],
  ],
  [
    "sector rules armed together, each failing only its own sector",
    '[inject-error]\nevent = "pwritev"\nsector = "8"\nerrno = "28"\n[inject-error]\nevent = "pwritev"\nsector = "16"\nerrno = "13"\n',
    [["write", 4096, 512], ["write", 8192, 512], ["write", 0, 512], ["write", 4096, 8192]],
  ],
];

for (const [what, cfg, cmds] of differential) {
  Deno.test({
    name: `blkdebug matches qemu-io on a raw image: ${what}`,
    ignore: skipUnless("qemu-io"),
    async fn() {
      const theirs = await outcomes(cfg, cmds, false);
      assert.equal(theirs.length, cmds.length);
      assert.deepEqual(await outcomes(cfg, cmds, true), theirs);
    },
  });
}

Deno.test({
  name: "blkdebug fails a flush only when it reaches its flush_to_disk, as qemu-io shows",
  ignore: skipUnless("qemu-io"),
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeFile(`${dir}/d.img`, new Uint8Array(65536));
      const spec = `json:${
        JSON.stringify({
          driver: "raw",
          file: {
            driver: "blkdebug",
            "inject-error": [{ event: "flush_to_os", iotype: "flush" }],
            image: { driver: "file", filename: `${dir}/d.img` },
          },
        })
      }`;
      for (const cmds of [["flush"], ["write 0 512", "flush"]]) {
        const args = ["-t", "writeback", ...cmds.flatMap((c) => ["-c", c]), spec];
        const theirs = (await new Deno.Command("qemu-io", { args, stdout: "null", stderr: "null" }).output()).code;
        await using img = await open(spec, { cache: "writeback" });
        let ours = 0;
        for (const c of cmds) {
          const p = c === "flush" ? img.flush() : img.pwrite(0, new Uint8Array(512));
          ours = await p.then(() => ours, () => 1);
        }
        assert.equal(ours, theirs, `${cmds.join("; ")}: qemu-io exit ${theirs}`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
