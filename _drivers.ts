/**
 * Registers every driver and filter: importing a driver's module registers
 * it. `mod.ts` imports this module, and so do the command lines
 * (`cli/main.ts`), which need the drivers but not the library's exports
 * (the crash explorer's runner, oracles and log reader among them).
 *
 * @module
 */

import "./drivers/file.ts";
import "./drivers/memory.ts";
import "./drivers/raw.ts";
import "./drivers/null.ts";
import "./drivers/foreign.ts";
import "./drivers/qcow2/qcow2.ts";
import "./drivers/luks/luks.ts";
import "./drivers/nbd/client.ts";
import "./drivers/rbd/rbd.ts";
import "./drivers/ssh/ssh.ts";
import "./filters/blkdebug.ts";
import "./filters/throttle.ts";
import "./filters/recorder.ts";
import "./filters/copy_on_read.ts";
import "./filters/quorum.ts";
import "./filters/compress.ts";
import "./filters/crash/_capture.ts";
