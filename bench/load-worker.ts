// A load generator process: receives one LoadJob over IPC, checks that one request of it
// succeeds, runs the load (warm-up, then the measured window), replies with a LoadSummary and
// exits. Running every load in its own process keeps the generator's event loop free of anything
// else (the runner, the other protocol's client) and gives each measurement a fresh heap.
import { createGrpcCaller, describeRpcError, runGrpcLoad } from './grpc-load.ts';
import { runHttpLoad } from './http-load.ts';
import type { HttpRequestSpec, LoadJob, LoadSummary, WorkerReply } from './load-job.ts';

async function run(job: LoadJob): Promise<LoadSummary> {
  if (job.kind === 'http') {
    await preflightHttp(job.baseUrl, job.requests[0]);
    return runHttpLoad(job);
  }
  const caller = createGrpcCaller(job.baseUrl);
  const first = job.calls[0];
  if (first === undefined) throw new Error('the job has no calls');
  try {
    await caller.invoke(first, job.timeoutSeconds * 1000);
  } catch (error) {
    throw new Error(`preflight ${first.rpc} failed: ${describeRpcError(error)}: ${error instanceof Error ? error.message : String(error)}`);
  }
  return runGrpcLoad(job, caller);
}

/** Fails with the answer's status and body when the first request of the job is not a success. */
async function preflightHttp(baseUrl: string, request: HttpRequestSpec | undefined): Promise<void> {
  if (request === undefined) throw new Error('the job has no requests');
  const response = await fetch(new URL(request.path, baseUrl), {
    method: request.method,
    headers: request.headers,
    ...(request.body === undefined ? {} : { body: request.body }),
    signal: AbortSignal.timeout(30_000),
  });
  const body = await response.text();
  if (!response.ok) throw new Error(`preflight ${request.method} ${request.path} answered ${response.status}: ${body.slice(0, 300)}`);
}

function reply(message: WorkerReply): void {
  // Exit only once the reply has been handed to the channel, or it could be lost.
  process.send?.(message, () => process.exit(0));
}

if (process.send === undefined) {
  process.stderr.write('bench/load-worker.ts is started by bench/run.ts with an IPC channel; it does nothing on its own.\n');
  process.exit(2);
}
process.once('message', (message: unknown) => {
  run(message as LoadJob).then(
    (summary) => reply({ ok: true, summary }),
    (error: unknown) => reply({ ok: false, error: error instanceof Error ? error.message : String(error) }),
  );
});
