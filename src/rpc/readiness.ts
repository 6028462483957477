/** A dependency the process needs to serve requests, checked by `/ready` and the gRPC health service. */
export type ReadinessCheck = () => Promise<void>;
