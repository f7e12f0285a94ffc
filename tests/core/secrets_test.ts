import assert from "node:assert/strict";
import { BlockError } from "../../core/errors.ts";
import { defineObject, defineSecret, getSecret, hasSecret, removeSecret } from "../../core/secrets.ts";

const text = (b: Uint8Array) => new TextDecoder().decode(b);

Deno.test("defineSecret() stores raw data and getSecret() returns a copy", () => {
  defineSecret("t-raw", { data: "pass" });
  const a = getSecret("t-raw");
  a.fill(0);
  assert.equal(text(getSecret("t-raw")), "pass");
  removeSecret("t-raw");
  assert.equal(hasSecret("t-raw"), false);
});

Deno.test("defineSecret() decodes base64 and refuses bad base64", () => {
  defineSecret("t-b64", { data: "cGFzcw==", format: "base64" });
  assert.equal(text(getSecret("t-b64")), "pass");
  removeSecret("t-b64");
  assert.throws(() => defineSecret("t-bad", { data: "!!", format: "base64" }), /not valid base64/);
});

Deno.test("defineSecret() reads a file once", () => {
  const path = Deno.makeTempFileSync();
  Deno.writeTextFileSync(path, "fromfile");
  defineSecret("t-file", { file: path });
  Deno.writeTextFileSync(path, "changed");
  assert.equal(text(getSecret("t-file")), "fromfile");
  removeSecret("t-file");
  Deno.removeSync(path);
});

Deno.test("defineSecret() refuses duplicates, both or neither source", () => {
  defineSecret("t-dup", { data: "x" });
  assert.throws(() => defineSecret("t-dup", { data: "y" }), (e) => e instanceof BlockError && e.code === "EEXIST");
  removeSecret("t-dup");
  assert.throws(() => defineSecret("t-none", {}), /exactly one of 'data' and 'file'/);
  assert.throws(() => defineSecret("t-both", { data: "a", file: "/x" }), /exactly one/);
});

Deno.test("getSecret() names the unknown id and the option, never secret bytes", () => {
  assert.throws(() => getSecret("nope", "encrypt.key-secret"), /No secret with id 'nope' found \(named by option 'encrypt.key-secret'\)/);
});

Deno.test("defineObject() parses QEMU's --object secret syntax with ,, escapes", () => {
  defineObject("secret,id=t-obj,data=a,,b");
  assert.equal(text(getSecret("t-obj")), "a,b");
  removeSecret("t-obj");
  assert.throws(() => defineObject("iothread,id=io0"), /only 'secret' objects/);
  assert.throws(() => defineObject("secret,data=x"), /'id' is missing/);
  assert.throws(() => defineObject("secret,id=t-k,data=x,color=red"), /Invalid parameter 'color'/);
});
