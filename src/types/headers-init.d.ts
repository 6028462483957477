// @connectrpc/connect's types name the DOM's global `HeadersInit` (call options, ConnectError
// metadata, the transport's request headers), which neither this project's lib (es2024, no DOM)
// nor @types/node declares. Unresolved, each of those parameters is an error type that accepts
// anything unchecked; declared here as what Node's own Headers constructor takes, they are checked.
type HeadersInit = NonNullable<ConstructorParameters<typeof Headers>[0]>;
