// Process entry point. The module compile cache is turned on before anything else is loaded:
// Node then keeps each module's compiled code, and for this project's .ts files their
// type-stripped source, on disk, so a restart skips that work. Where the directory cannot be
// written, Node runs without it.
//
// The cache holds code that every later start runs, so it lives with the code it was made from:
// the project's node_modules/.cache, or NODE_COMPILE_CACHE where the operator sets it. Node's
// default, node-compile-cache in the system's temporary directory, is a fixed path in a directory
// every local user can write: one who made it first could fill it with entries of their own,
// checked only by CRC32, and have them run in the server (helper 195).
//
// This one file is JavaScript, not TypeScript, because an entry point is read before it can turn
// the cache on: a .ts entry made every start load Node's type stripper (amaro and its
// WebAssembly, ~130 ms of a core on the reference machine) to strip these few lines, while every
// other .ts file came stripped from the cache.
import { enableCompileCache } from 'node:module';
import process from 'node:process';
import { fileURLToPath, URL } from 'node:url';

enableCompileCache(process.env.NODE_COMPILE_CACHE || fileURLToPath(new URL('../node_modules/.cache/node-compile-cache', import.meta.url)));
await import('./start.ts');
