// How calls are spread over the processes behind one layer URL (src/communication/resolved-endpoints.ts),
// with a scripted resolver and clock: which address each call goes to, as names resolve, change,
// fail or hang. The transport over real servers is tests/integration/layer-transport.test.ts.
import { describe, expect, it } from 'vitest';
import { RESOLVE_INTERVAL_MS, ResolvedEndpoints, type Endpoint } from '../../src/communication/resolved-endpoints.ts';

interface Fake extends Endpoint {
  address: string;
  drained: boolean;
}

function endpoints(resolve: (host: string) => Promise<string[]>) {
  let now = 0;
  const made: Fake[] = [];
  const set = new ResolvedEndpoints<Fake>(
    'layer.test',
    (address) => {
      const fake: Fake = {
        address: address ?? 'by-name',
        drained: false,
        drain() {
          fake.drained = true;
        },
      };
      made.push(fake);
      return fake;
    },
    { resolve, now: () => now },
  );
  const picks = (count: number) => Array.from({ length: count }, () => set.pick().address);
  return { set, made, picks, advance: (ms: number) => (now += ms) };
}

describe('the processes behind a layer URL', () => {
  it('when the name resolves to several addresses, then calls go to each in turn, once each, duplicates counted once', async () => {
    const { set, picks } = endpoints(async () => ['10.0.0.1', '10.0.0.2', '10.0.0.1']);
    await set.initial();
    expect(picks(4)).toEqual(['10.0.0.1', '10.0.0.2', '10.0.0.1', '10.0.0.2']);
  });

  it('when the name resolves again to other addresses, then the new ones take their turns and the ones gone are drained, not cut', async () => {
    let addresses = ['10.0.0.1', '10.0.0.2'];
    const { set, made, picks, advance } = endpoints(async () => addresses);
    await set.initial();
    addresses = ['10.0.0.2', '10.0.0.3'];
    advance(RESOLVE_INTERVAL_MS);
    set.pick();
    await set.settled();
    expect(picks(4).sort()).toEqual(['10.0.0.2', '10.0.0.2', '10.0.0.3', '10.0.0.3']);
    expect(made.filter((fake) => fake.drained).map((fake) => fake.address)).toEqual(['by-name', '10.0.0.1']);
  });

  it('when an address fails, then it is passed over until its time is up, and used again if every other has failed too', async () => {
    const { set, picks, advance } = endpoints(async () => ['10.0.0.1', '10.0.0.2']);
    await set.initial();
    const first = set.pick();
    set.failed(first);
    await set.settled();
    expect(picks(3)).toEqual(['10.0.0.2', '10.0.0.2', '10.0.0.2']);
    set.failed(set.pick());
    expect(picks(2).sort()).toEqual(['10.0.0.1', '10.0.0.2']);
    advance(RESOLVE_INTERVAL_MS);
    await set.settled();
    expect(picks(2).sort()).toEqual(['10.0.0.1', '10.0.0.2']);
  });

  it('when the name resolves to nothing, or fails to resolve, then the addresses it had are kept', async () => {
    let answer: () => Promise<string[]> = async () => ['10.0.0.1'];
    const { set, picks, advance } = endpoints(() => answer());
    await set.initial();
    answer = async () => [];
    advance(RESOLVE_INTERVAL_MS);
    set.pick();
    await set.settled();
    answer = () => Promise.reject(new Error('ENOTFOUND'));
    advance(RESOLVE_INTERVAL_MS);
    set.pick();
    await set.settled();
    expect(picks(2)).toEqual(['10.0.0.1', '10.0.0.1']);
  });

  it('when the resolver hangs, then the first calls wait at most a second, and go by name', async () => {
    const { set, picks } = endpoints(() => new Promise<string[]>(() => undefined));
    const started = Date.now();
    await set.initial();
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(set.initial()).toBeUndefined();
    expect(picks(2)).toEqual(['by-name', 'by-name']);
  });

  it('when the host is an address, then nothing is resolved: it is the one process', () => {
    const set = new ResolvedEndpoints<Fake>('[::1]', (address) => ({ address: address ?? 'by-name', drained: false, drain: () => undefined }), {
      resolve: () => Promise.reject(new Error('not to be called')),
    });
    expect(set.initial()).toBeUndefined();
    expect(set.pick().address).toBe('by-name');
  });
});
