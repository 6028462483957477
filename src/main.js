// Process entry point. The module compile cache is turned on before anything else is loaded:
// Node then keeps each module's compiled code, and for this project's .ts files their
// type-stripped source, on disk (NODE_COMPILE_CACHE, else the system's temporary directory), so a
// restart skips that work. Where the directory cannot be written, Node runs without it.
//
// This one file is JavaScript, not TypeScript, because an entry point is read before it can turn
// the cache on: a .ts entry made every start load Node's type stripper (amaro and its
// WebAssembly, ~130 ms of a core on the reference machine) to strip these few lines, while every
// other .ts file came stripped from the cache.
import { enableCompileCache } from 'node:module';

enableCompileCache();
await import('./start.ts');
