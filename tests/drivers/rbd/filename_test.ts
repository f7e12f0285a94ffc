import assert from "node:assert/strict";
import { type BlockError } from "../../../mod.ts";
import { escapeRbd, parseRbdFilename } from "../../../drivers/rbd/rbd.ts";
import { base64CString, readRbdOptions } from "../../../drivers/rbd/_connect.ts";
import { keyValuePairs } from "../../../drivers/rbd/_filename.ts";
import { cephConf, imageName, skipUnlessCeph } from "../../_helpers/ceph.ts";
import { run, runOk, skipUnless } from "../../_helpers/qemu.ts";

Deno.test("parseRbdFilename() reads pool, namespace, image, snapshot, conf, id and Ceph options", () => {
  assert.deepEqual(parseRbdFilename("rbd:rbd/disk"), { pool: "rbd", namespace: "", image: "disk" });
  assert.deepEqual(parseRbdFilename("rbd:p/ns/img@s1:conf=/etc/c.conf:id=bob:rbd_cache=false:client_mount_timeout=5"), {
    pool: "p",
    namespace: "ns",
    image: "img",
    snapshot: "s1",
    conf: "/etc/c.conf",
    user: "bob",
    "=keyvalue-pairs": '["rbd_cache","false","client_mount_timeout","5"]',
  });
});

Deno.test("parseRbdFilename() unescapes backslash-escaped colons, at signs, slashes and equals signs", () => {
  const o = parseRbdFilename("rbd:po\\/ol/im\\:a\\@ge:conf=/a\\:b.conf:mon_host=[v2\\:1.2.3.4\\:3300]");
  assert.deepEqual([o.pool, o.image, o.snapshot, o.conf], ["po/ol", "im:a@ge", undefined, "/a:b.conf"]);
  assert.deepEqual(keyValuePairs(o["=keyvalue-pairs"]), [["mon_host", "[v2:1.2.3.4:3300]"]]);
  assert.equal(parseRbdFilename(`rbd:rbd/${escapeRbd("x:y@z=w/v")}`).image, "x:y@z=w/v");
});

Deno.test("parseRbdFilename() rejects a missing pool, image or value with EINVAL naming the filename", () => {
  const cases: [string, RegExp][] = [
    ["rbd:justpool", /pool name is required/],
    ["rbd:/img", /pool name is empty/],
    ["rbd:rbd/", /image name is empty/],
    ["rbd:rbd/img@", /snapshot name after '@' is empty/],
    ["rbd:rbd/img:conf", /Ceph option 'conf' has no value/],
    ["rbd:rbd/img:=x", /option name is empty/],
    ["nbd:rbd/img", /must start with 'rbd:'/],
  ];
  for (const [name, re] of cases) {
    assert.throws(
      () => parseRbdFilename(name),
      (e: BlockError) => e.code === "EINVAL" && re.test(e.message) && e.message.includes(name),
      name,
    );
  }
});

Deno.test("readRbdOptions() validates QEMU's option names and values", () => {
  const ok = readRbdOptions({ pool: "p", image: "i", server: [{ host: "::1", port: "3300" }, { host: "10.0.0.1", port: 6789 }] });
  assert.equal(ok.monHost, "[::1]:3300;10.0.0.1:6789");
  assert.equal(readRbdOptions({ pool: "p", image: "i", "auth-client-required": ["cephx", "none"] }).authClientRequired, "cephx;none");
  assert.deepEqual(readRbdOptions({ filename: "rbd:p/i@s:id=u" }), {
    pool: "p",
    namespace: "",
    image: "i",
    snapshot: "s",
    conf: undefined,
    user: "u",
    keySecret: undefined,
    authClientRequired: undefined,
    monHost: undefined,
    keyValues: [],
    direct: false,
    completion: "eventfd",
  });
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ image: "i" }, /needs option 'pool'/],
    [{ pool: "p", image: "i", bogus: 1 }, /Unknown option 'bogus'/],
    [{ pool: "p", image: "i", "auth-client-required": ["kerberos"] }, /'kerberos' for option 'auth-client-required'/],
    [{ pool: "p", image: "i", server: [{ host: "h" }] }, /'server.0'.*'host' and 'port'/],
    [{ pool: "p", image: "i", "key-secret": "a", "password-secret": "b" }, /clashes/],
    [{ pool: "p", image: "i", "=keyvalue-pairs": "[1]" }, /list of key and value strings/],
    [{ pool: "p", image: "i", "=keyvalue-pairs": "{" }, /expected a JSON list/],
    [{ pool: "p", image: "i", encrypt: { format: "luks" } }, /encryption is not supported/],
  ];
  for (const [o, re] of bad) assert.throws(() => readRbdOptions(o), re, JSON.stringify(o));
});

Deno.test("base64CString() encodes a key as Ceph's base64, NUL-terminated, without a JS string", () => {
  for (const n of [0, 1, 2, 3, 16, 31]) {
    const bytes = crypto.getRandomValues(new Uint8Array(n));
    const out = base64CString(bytes);
    assert.equal(out[out.length - 1], 0);
    assert.equal(new TextDecoder().decode(out.subarray(0, -1)), btoa(String.fromCharCode(...bytes)));
  }
});

Deno.test({
  name: "parseRbdFilename() splits escaped names as qemu-img's rbd driver does",
  ignore: skipUnlessCeph() || skipUnless("qemu-img"),
  async fn() {
    const conf = await cephConf();
    const base = imageName();
    for (const image of [`${base}-plain`, `${base}:colon`, `${base}=eq`]) {
      await runOk("rbd", ["-c", conf, "create", "--pool", "rbd", "--image", image, "--size", "1M"]);
      const name = `rbd:rbd/${escapeRbd(image)}:conf=${conf}:id=admin:rbd_cache=false`;
      const r = await run("qemu-img", ["info", "--output=json", "-f", "raw", name]);
      assert.equal(r.code, 0, r.stderr);
      // qemu-img names the image by the options it parsed: json:{"driver": "raw", "file": {...}}.
      const theirs = JSON.parse(JSON.parse(r.stdout).filename.slice(5)).file;
      const ours = parseRbdFilename(name);
      assert.deepEqual({ pool: ours.pool, image: ours.image, namespace: ours.namespace, conf: ours.conf, user: ours.user }, {
        pool: theirs.pool,
        image: theirs.image,
        namespace: theirs.namespace,
        conf: theirs.conf,
        user: theirs.user,
      });
    }
  },
});
