/**
 * Command-line argument rules of QEMU's getopt that node:util's parseArgs
 * does not share.
 *
 * @module
 */

import type { ParseArgsConfig } from "node:util";

type OptionTable = NonNullable<ParseArgsConfig["options"]>;

/**
 * getopt's rule, which qemu-img follows: an option that takes a value takes
 * the next argument as it, even one that starts with `-` (`--size -1` is a
 * size of -1, refused as such, not a missing value).
 */
export function takeDashValues(args: string[], options: OptionTable): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--") return out.concat(args.slice(i));
    const next = args[i + 1];
    const opt = a.startsWith("--")
      ? options[a.slice(2)]
      : /^-[^-]$/.test(a)
      ? Object.values(options).find((o) => o.short === a[1])
      : undefined;
    if (next?.startsWith("-") && opt?.type === "string") {
      out.push(a.startsWith("--") ? `${a}=${next}` : a + next);
      i++;
    } else {
      out.push(a);
    }
  }
  return out;
}
