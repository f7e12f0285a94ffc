/**
 * Headless Chromium for tests: a page driven over the DevTools protocol
 * (CDP) on a loopback port, to load a report, read its DOM after its
 * scripts ran, and take a screenshot; and a small PNG decoder to look at
 * the screenshot's pixels. Tests skip (`SKIP:` line) where Chromium is
 * absent.
 *
 * @module
 */

import { inflateSync } from "node:zlib";

/** The Chromium binary name, if installed. */
export function chromium(): string | undefined {
  for (const name of ["chromium", "chromium-browser", "google-chrome"]) {
    if (found(name)) return name;
  }
  console.warn("SKIP: 'chromium' is not installed; tests that render in a browser are skipped (CI installs it)");
  return undefined;
}

const quiet = new Map<string, boolean>();
function found(name: string): boolean {
  let ok = quiet.get(name);
  if (ok === undefined) {
    ok = new Deno.Command("sh", { args: ["-c", `command -v ${name}`], stdout: "null", stderr: "null" }).outputSync().success;
    quiet.set(name, ok);
  }
  return ok;
}

/** `ignore` for Deno.test: true when no Chromium is installed. */
export function noChromium(): boolean {
  return chromium() === undefined;
}

/** The flags every headless run uses (no network services, a fresh profile). */
export function headlessFlags(userDataDir: string): string[] {
  return [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    `--user-data-dir=${userDataDir}`,
  ];
}

/** A page of a headless Chromium driven over CDP. */
export interface Page {
  /** Navigates and waits for the load event. */
  load(url: string): Promise<void>;
  /** Evaluates an expression in the page and returns its value (JSON-able). */
  evaluate<T>(expression: string): Promise<T>;
  /** Takes a PNG screenshot of a region of the page (CSS pixels). */
  screenshot(clip: { x: number; y: number; width: number; height: number }): Promise<Uint8Array>;
  /** Closes the browser and removes its profile. */
  close(): Promise<void>;
}

/** Starts headless Chromium with a debugging port on 127.0.0.1 and opens its page. */
export async function openPage(width = 1280, height = 900): Promise<Page> {
  const bin = chromium();
  if (!bin) throw new Error("chromium is not installed");
  const profile = await Deno.makeTempDir({ prefix: "blkgraph-chromium-" });
  const child = new Deno.Command(bin, {
    args: [
      ...headlessFlags(profile),
      "--remote-debugging-address=127.0.0.1",
      "--remote-debugging-port=0",
      `--window-size=${width},${height}`,
      "about:blank",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  let port = 0;
  const deadline = setTimeout(() => child.kill(), 30_000);
  while (!port) {
    const r = await reader.read();
    if (r.done) break;
    text += r.value;
    const m = /DevTools listening on ws:\/\/127\.0\.0\.1:(\d+)\//.exec(text);
    if (m) port = Number(m[1]);
  }
  clearTimeout(deadline);
  // Keep draining stderr so Chromium never blocks on a full pipe.
  (async () => {
    while (!(await reader.read()).done);
  })().catch(() => {});
  if (!port) throw new Error(`chromium did not open a debugging port:\n${text.slice(-2000)}`);
  const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json() as { type: string; webSocketDebuggerUrl: string }[];
  const target = list.find((t) => t.type === "page");
  if (!target) throw new Error("chromium has no page target");
  const ws = new WebSocket(target.webSocketDebuggerUrl);
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = reject;
  });
  let nextId = 1;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  const waiters: { method: string; resolve: () => void }[] = [];
  ws.onmessage = (m) => {
    const msg = JSON.parse(String(m.data));
    if (msg.id !== undefined) {
      const p = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error) p?.reject(new Error(`CDP: ${msg.error.message}`));
      else p?.resolve(msg.result);
      return;
    }
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (waiters[i].method === msg.method) waiters.splice(i, 1)[0].resolve();
    }
  };
  const send = (method: string, params: Record<string, unknown> = {}) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      ws.send(JSON.stringify({ id, method, params }));
    });
  const once = (method: string) => new Promise<void>((resolve) => waiters.push({ method, resolve }));
  await send("Page.enable");
  await send("Emulation.setDeviceMetricsOverride", { width, height, deviceScaleFactor: 1, mobile: false });
  return {
    async load(url) {
      const loaded = once("Page.loadEventFired");
      await send("Page.navigate", { url });
      await loaded;
    },
    async evaluate<T>(expression: string): Promise<T> {
      const r = await send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
      if (r.exceptionDetails) throw new Error(`page threw: ${JSON.stringify(r.exceptionDetails)}`);
      return (r.result as { value: T }).value;
    },
    async screenshot(clip) {
      const r = await send("Page.captureScreenshot", { format: "png", clip: { ...clip, scale: 1 }, captureBeyondViewport: true });
      return Uint8Array.from(atob(r.data as string), (c) => c.charCodeAt(0));
    },
    async close() {
      ws.close();
      try {
        child.kill();
      } catch { /* already gone */ }
      await child.status;
      await Deno.remove(profile, { recursive: true }).catch(() => {});
    },
  };
}

/** A decoded PNG: width, height and RGBA pixels. */
export interface Image {
  /** Width in pixels. */
  width: number;
  /** Height in pixels. */
  height: number;
  /** RGBA, 4 bytes per pixel, row by row. */
  rgba: Uint8Array;
}

/** Decodes an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium's screenshots are). */
export function decodePng(png: Uint8Array): Image {
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  if (view.getUint32(0) !== 0x89504e47) throw new Error("not a PNG");
  let at = 8;
  let width = 0, height = 0, colorType = 0;
  const idat: Uint8Array[] = [];
  while (at < png.length) {
    const len = view.getUint32(at);
    const type = String.fromCharCode(...png.subarray(at + 4, at + 8));
    const data = png.subarray(at + 8, at + 8 + len);
    if (type === "IHDR") {
      width = view.getUint32(at + 8);
      height = view.getUint32(at + 12);
      if (data[8] !== 8 || data[12] !== 0) throw new Error("only 8-bit non-interlaced PNGs are supported");
      colorType = data[9];
    } else if (type === "IDAT") idat.push(data);
    else if (type === "IEND") break;
    at += 12 + len;
  }
  const bpp = colorType === 6 ? 4 : colorType === 2 ? 3 : 0;
  if (!bpp) throw new Error(`PNG colour type ${colorType} is not supported`);
  const raw = new Uint8Array(inflateSync(concat(idat)));
  const stride = width * bpp;
  const out = new Uint8Array(width * height * 4);
  let prev = new Uint8Array(stride);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)];
    const line = raw.slice(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? line[x - bpp] : 0, b = prev[x], c = x >= bpp ? prev[x - bpp] : 0;
      const pred = f === 1 ? a : f === 2 ? b : f === 3 ? (a + b) >> 1 : f === 4 ? paeth(a, b, c) : 0;
      line[x] = (line[x] + pred) & 0xff;
    }
    for (let x = 0; x < width; x++) {
      out.set(line.subarray(x * bpp, x * bpp + 3), (y * width + x) * 4);
      out[(y * width + x) * 4 + 3] = bpp === 4 ? line[x * bpp + 3] : 255;
    }
    prev = line;
  }
  return { width, height, rgba: out };
}

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Counts the pixels of an image that have exactly the colour `#rrggbb`. */
export function countColour(img: Image, hex: string): number {
  const r = parseInt(hex.slice(1, 3), 16), g = parseInt(hex.slice(3, 5), 16), b = parseInt(hex.slice(5, 7), 16);
  let n = 0;
  for (let i = 0; i < img.rgba.length; i += 4) if (img.rgba[i] === r && img.rgba[i + 1] === g && img.rgba[i + 2] === b) n++;
  return n;
}
