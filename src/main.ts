// Process entry point. The module compile cache is turned on before anything else is loaded:
// Node then keeps each module's compiled code, and for this project's .ts files their
// type-stripped source, on disk (NODE_COMPILE_CACHE, else the system's temporary directory), so a
// restart skips that work. Where the directory cannot be written, Node runs without it.
import { enableCompileCache } from 'node:module';

enableCompileCache();
await import('./start.ts');
