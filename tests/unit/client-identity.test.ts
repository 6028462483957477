// The pieces that decide who a client is for throttling: the address rule shared by every
// protocol, the key its counters are kept under, known-device tokens and atomic reservations,
// and how much of what the client sent travels on into an internal call.
import { describe, expect, it } from 'vitest';
import { addressKey, createClientAddressResolver, placesPerAddress } from '../../src/infrastructure/client-address.ts';
import { MemoryCounterStore } from '../../src/infrastructure/rate-limiter.ts';
import { DEVICE_TOKEN_MAX_LENGTH, DeviceTokens } from '../../src/infrastructure/security/device-tokens.ts';
import { USER_AGENT_MAX_LENGTH } from '../../src/domain/actor.ts';
import { ACCESS_TOKEN_MAX_LENGTH, bearerToken, writeCallerHeaders } from '../../src/rpc/caller.ts';
import { resolveClientInfo } from '../../src/rpc/client-edge.ts';

describe('client address', () => {
  it('when a client holds all its places, then it gets no more until one is released, and one /64 is one client', () => {
    const places = placesPerAddress(2);
    const first = places.take('2001:db8:1:2::a');
    expect(first).toBeTypeOf('function');
    expect(places.take('2001:db8:1:2::b')).toBeTypeOf('function');
    // A third host of the same /64, and the same client in IPv4-mapped form as another key's.
    expect(places.take('2001:db8:1:2:ffff::c')).toBeUndefined();
    expect(places.take('::ffff:198.51.100.7')).toBeTypeOf('function');
    first?.();
    expect(places.take('2001:db8:1:2::d')).toBeTypeOf('function');
    expect(places.take('2001:db8:1:2::e')).toBeUndefined();
  });

  it('when no proxy is trusted, then X-Forwarded-For is ignored: a client cannot choose its address', () => {
    const resolve = createClientAddressResolver(false);
    expect(resolve('198.51.100.7', '203.0.113.1')).toBe('198.51.100.7');
  });

  it('when one hop is trusted, then the address the proxy saw is used, not what the client wrote before it', () => {
    const resolve = createClientAddressResolver(1);
    expect(resolve('10.0.0.2', '6.6.6.6, 203.0.113.9')).toBe('203.0.113.9');
    expect(resolve('10.0.0.2', undefined)).toBe('10.0.0.2');
  });

  it('when proxies are trusted by subnet, then trusted hops are skipped from the right', () => {
    const resolve = createClientAddressResolver('10.0.0.0/8, loopback');
    expect(resolve('127.0.0.1', '203.0.113.5, 10.1.2.3')).toBe('203.0.113.5');
    expect(resolve('192.0.2.1', '203.0.113.5')).toBe('192.0.2.1');
  });

  it('when a trusted proxy passes on something that is not an address, then there is no address rather than the text', () => {
    expect(createClientAddressResolver(true)('10.0.0.2', '<script>')).toBeUndefined();
  });

  it('when a forwarded address is longer than any address is written (a long zone id, zero-padded parts), then there is no address', () => {
    const resolve = createClientAddressResolver(true);
    expect(resolve('10.0.0.2', `fe80::1%${'a'.repeat(5_000)}`)).toBeUndefined();
    expect(resolve('10.0.0.2', `${'0'.repeat(5_000)}1.0.0.1`)).toBeUndefined();
    // The longest address text still resolves, and every address is recorded in one form (RFC 5952).
    expect(resolve('10.0.0.2', 'ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255')).toBe('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff');
    expect(resolve('10.0.0.2', 'fe80::1%eth0')).toBe('fe80::1');
  });

  it('when a trusted proxy forwards one address in several forms, then it resolves to one text (RFC 5952; IPv4-mapped as IPv4)', () => {
    const resolve = createClientAddressResolver(true);
    for (const form of ['192.0.2.4', '::ffff:192.0.2.4', '::FFFF:c000:204', '192.0.2.4:51234', '[192.0.2.4]', '[::ffff:192.0.2.4]:443'])
      expect(resolve('10.0.0.2', form), form).toBe('192.0.2.4');
    for (const form of ['2001:db8:0:1::7', '2001:0DB8:0000:0001:0:0:0:7', '2001:db8:0:1:0::7%zone', '[2001:db8:0:1::7]:8443'])
      expect(resolve('10.0.0.2', form), form).toBe('2001:db8:0:1::7');
    // An IPv4 tail is part of the IPv6 address (NAT64's 64:ff9b::/96, say).
    expect(resolve('10.0.0.2', '64:ff9b::192.0.2.4')).toBe('64:ff9b::c000:204');
    // IPv4 is read strictly, as Node reads it: ipaddr.js took leading zeros as octal and 09 as 0,
    // recording someone else's address.
    for (const form of ['010.0.0.1', '1.2.3.09', '192.0.2.004', '3221225988', '0xc0.0x00.0x02.0x04', '64:ff9b::01.2.3.4']) expect(resolve('10.0.0.2', form), form).toBeUndefined();
    // Two runs of zeros of one length: the first is the one written as ::.
    expect(resolve('10.0.0.2', '0:0:da23:0:0:b871:0:0')).toBe('::da23:0:0:b871:0:0');
    expect(resolve('10.0.0.2', '2001:db8:0:0:1:0:0:0')).toBe('2001:db8:0:0:1::');
    // The socket peer is the kernel's text, but for an IPv4 client of a dual-stack listener,
    // which is recorded as IPv4, as it is through a proxy (helper 134).
    expect(resolve('::ffff:10.0.0.2', undefined)).toBe('10.0.0.2');
    expect(resolve('::1', undefined)).toBe('::1');
    expect(resolve('2001:DB8::1', undefined)).toBe('2001:DB8::1');
  });

  it('when addresses are keyed, then IPv6 hosts of one /64 share a key, IPv4-mapped counts as IPv4', () => {
    expect(addressKey('2001:db8:1:2::1')).toBe(addressKey('2001:db8:1:2:ffff:ffff:ffff:ffff'));
    expect(addressKey('2001:db8:1:2::1')).not.toBe(addressKey('2001:db8:1:3::1'));
    expect(addressKey('::ffff:192.0.2.4')).toBe('192.0.2.4');
    expect(addressKey('192.0.2.4')).toBe('192.0.2.4');
    expect(addressKey(undefined)).toBe('unknown');
    // IPv4 hosts written into IPv6 by a gateway (NAT64, SIIT, IPv4-compatible) are their IPv4
    // address, not one /64 shared by every IPv4 client behind it.
    expect(addressKey('64:ff9b::102:304')).toBe('1.2.3.4');
    // 6to4 gives an IPv4 host 65 536 /64s; Teredo carries the client's IPv4 address, inverted,
    // beside a server and flags shared by others (helper 137: keyed by /64, one IPv4 host had
    // 65 536 budgets, and every Teredo client of one server shared one).
    expect([addressKey('2002:c000:204:1::1'), addressKey('2002:c000:204:ffff::1')]).toEqual(['192.0.2.4', '192.0.2.4']);
    // Server 65.54.227.120, clients 192.0.2.45 and 198.51.100.7, with any flags and port.
    expect(addressKey('2001:0:4136:e378:8000:63bf:3fff:fdd2')).toBe('192.0.2.45');
    expect(addressKey('2001:0:4136:e378:1234:0:3fff:fdd2')).toBe('192.0.2.45');
    expect(addressKey('2001:0:4136:e378:8000:63bf:39cc:9bf8')).toBe('198.51.100.7');
    expect(addressKey('64:ff9b::909:909')).toBe('9.9.9.9');
    expect(addressKey('::ffff:0:102:304')).toBe('1.2.3.4');
    expect(addressKey('::102:304')).toBe('1.2.3.4');
    expect(addressKey('64:ff9b:1::102:304')).toBe('64:ff9b:1:0::/64');
  });
});

describe('known-device tokens', () => {
  const secret = 'device-token-test-secret-0123456789-abcdef';
  const HASH = `$2b$04$${'a'.repeat(53)}`;

  it('when a token is verified for the account it was issued for, then its device id comes back; for another account, nothing', () => {
    const devices = new DeviceTokens({ secret, ttlSeconds: 3600 });
    const token = devices.issue(7, HASH, 'device-a');
    expect(devices.verify(token, 7, HASH)).toBe('device-a');
    expect(devices.verify(token, 8, HASH)).toBeUndefined();
  });

  it("when the account's password has changed since a token was issued, then the token is not a known device", () => {
    const devices = new DeviceTokens({ secret, ttlSeconds: 3600 });
    const token = devices.issue(7, HASH, 'device-a');
    expect(devices.verify(token, 7, `${HASH.slice(0, -1)}X`)).toBeUndefined();
    expect(devices.verify(devices.issue(7, `${HASH.slice(0, -1)}X`, 'device-a'), 7, `${HASH.slice(0, -1)}X`)).toBe('device-a');
  });

  it('when a token is altered, signed with another secret, or expired, then it is not a known device', () => {
    let now = 1_000_000_000_000;
    const devices = new DeviceTokens({ secret, ttlSeconds: 60, now: () => now });
    const token = devices.issue(7, HASH, 'device-a');
    const [user, , expires, mac] = token.split('.');
    expect(devices.verify(`${user}.device-b.${expires}.${mac}`, 7, HASH)).toBeUndefined();
    expect(new DeviceTokens({ secret: `${secret}-other`, ttlSeconds: 60, now: () => now }).verify(token, 7, HASH)).toBeUndefined();
    expect(devices.verify('garbage', 7, HASH)).toBeUndefined();
    now += 61_000;
    expect(devices.verify(token, 7, HASH)).toBeUndefined();
  });

  it('when a token is asked whether this server issued it, before any account is known, then only an unexpired token of its own, all five parts intact, says yes', () => {
    let now = 1_000_000_000_000;
    const devices = new DeviceTokens({ secret, ttlSeconds: 60, now: () => now });
    const token = devices.issue(7, HASH, 'device-a');
    const [user, device, expires, mac, issued] = token.split('.');
    expect(devices.vouches(token)).toBe(true);
    expect(devices.vouches(`8.${device}.${expires}.${mac}.${issued}`)).toBe(false);
    expect(devices.vouches(`${user}.${device}.${expires}.${mac}`)).toBe(false);
    expect(devices.vouches(`${user}.${device}.${expires}.${mac}.${issued}x`)).toBe(false);
    expect(new DeviceTokens({ secret: `${secret}-other`, ttlSeconds: 60, now: () => now }).vouches(token)).toBe(false);
    expect(devices.vouches(undefined)).toBe(false);
    // Its issuer signature does not stand in for the account's: the fifth part of another token.
    expect(devices.verify(`${user}.${device}.${expires}.${mac}.${devices.issue(7, HASH, 'device-b').split('.')[4]}`, 7, HASH)).toBeUndefined();
    // A token of four parts, issued before the fifth, still names its device once the account is known.
    expect(devices.verify(`${user}.${device}.${expires}.${mac}`, 7, HASH)).toBe('device-a');
    now += 61_000;
    expect(devices.vouches(token)).toBe(false);
  });

  it('when a token is claimed for a login, then it vouches for no other login at the same time, and for none once it proved not to hold for its login', () => {
    const devices = new DeviceTokens({ secret, ttlSeconds: 60 });
    const token = devices.issue(7, HASH, 'device-a');
    expect(devices.claim(token)).toBe(true);
    expect(devices.claim(token)).toBe(false);
    devices.settle(token, true);
    expect(devices.claim(token)).toBe(true);
    devices.settle(token, false);
    expect(devices.claim(token)).toBe(false);
    // Verifying for its own account still works: only the early vouching is spent.
    expect(devices.verify(token, 7, HASH)).toBe('device-a');
    expect(devices.claim('garbage')).toBe(false);
  });
});

describe('counter reservations', () => {
  it('when many reservations race for one key, then exactly `limit` succeed, and a release frees one', async () => {
    const store = new MemoryCounterStore();
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => store.reserve('k', 5, 60_000, `r${i}`)));
    expect(results.filter((result) => result.reserved)).toHaveLength(5);
    await store.release('k', 'r0');
    expect((await store.reserve('k', 5, 60_000, 'again')).reserved).toBe(true);
    expect((await store.reserve('k', 5, 60_000, 'over')).reserved).toBe(false);
  });

  it('when a counter once at its limit was brought under it by a release, then a reservation made afterwards is given back by its release (helper 175)', async () => {
    const store = new MemoryCounterStore();
    for (const id of ['a', 'b', 'c', 'd', 'e']) expect((await store.reserve('k', 5, 60_000, id)).reserved).toBe(true);
    await store.release('k', 'e');
    expect((await store.reserve('k', 5, 60_000, 'f')).reserved).toBe(true);
    await store.release('k', 'f');
    expect((await store.peek('k')).count).toBe(4);
  });

  it('when a reservation that was refused, never made, or already given back is released, then the count stays (helper 170)', async () => {
    const store = new MemoryCounterStore();
    for (let i = 0; i < 5; i += 1) await store.reserve('k', 5, 60_000, `r${i}`);
    expect((await store.reserve('k', 5, 60_000, 'refused')).reserved).toBe(false);
    await store.release('k', 'refused');
    await store.release('k', 'never-sent');
    expect((await store.peek('k')).count).toBe(5);
    await store.release('k', 'r1');
    await store.release('k', 'r1');
    expect((await store.peek('k')).count).toBe(4);
  });
});

describe('what a public request carries into an internal call', () => {
  // Node's HTTP/1.1 parser refuses more than 16 KiB of headers (the layer servers keep that default).
  const LAYER_HEADER_LIMIT = 16 * 1024;
  const headerBytes = (headers: Record<string, string>) => Object.entries(headers).reduce((sum, [name, value]) => sum + name.length + value.length + 4, 0);

  it('when every header the edge forwards is as large as it can be, then the internal headers stay well under the layer server limit', () => {
    // The largest client headers the edge takes: the 16 KiB request limit would allow more of each.
    const header = (name: string) => ({ authorization: `Bearer ${'a'.repeat(15_000)}`, 'user-agent': '\u00ff'.repeat(15_000), 'x-device-token': 'd'.repeat(15_000) })[name];
    const client = resolveClientInfo(() => 'ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255', undefined, header);
    const oversized: Record<string, string> = {};
    writeCallerHeaders({ accessToken: bearerToken(header('authorization')), client }, oversized);
    expect(oversized['x-arcana-access-token']).toBeUndefined();
    expect(oversized['x-arcana-client-device']).toBeUndefined();

    // And the largest that are kept: a token and device token at their bounds, each agent
    // character growing sixfold when percent-encoded (a Latin-1 byte is two in UTF-8).
    const largest: Record<string, string> = {};
    const token = 'a'.repeat(ACCESS_TOKEN_MAX_LENGTH);
    expect(bearerToken(`Bearer ${token}`)).toBe(token);
    writeCallerHeaders({ accessToken: token, client: { ...client, deviceToken: 'd'.repeat(DEVICE_TOKEN_MAX_LENGTH) } }, largest);
    expect(largest['x-arcana-client-agent']).toHaveLength(6 * USER_AGENT_MAX_LENGTH);
    // Room is left for the secret, the request id, the trace and deadline headers and the rest.
    expect(headerBytes(largest)).toBeLessThan(LAYER_HEADER_LIMIT / 2);
  });
});
