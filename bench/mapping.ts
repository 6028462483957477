// Micro-benchmark of the one mapping mechanism (src/domain/message-mapping.ts): 100k conversions
// of a user row each way and to REST JSON. Run: node bench/mapping.ts
import { toUserMessage } from '../src/domain/user-mapping.ts';
import { userFromProto, userToProto } from '../src/communication/repository/record-mapping.ts';
import { toRestUser } from '../src/controllers/rest/rest-mapping.ts';
import type { User } from '../gen/prisma/client.ts';

const row: User = {
  id: 42,
  username: 'mapped',
  usernameKey: 'mapped',
  email: 'mapped@example.com',
  passwordHash: '$2b$04$hash',
  firstName: 'Ada',
  lastName: 'Last',
  phone: null,
  avatarUrl: 'https://example.com/a.png',
  role: 'GUEST',
  status: 'SUSPENDED',
  isVerified: true,
  isActive: false,
  createdAt: new Date('2024-02-29T23:59:59.999Z'),
  updatedAt: new Date('2025-01-01T00:00:00.001Z'),
  lastLoginAt: new Date('1999-12-31T12:00:00.123Z'),
  version: 7,
};
const N = 100_000;

function time(name: string, fn: () => unknown): void {
  for (let i = 0; i < 20_000; i++) fn();
  const start = performance.now();
  for (let i = 0; i < N; i++) fn();
  const ms = performance.now() - start;
  console.log(`${name.padEnd(20)} ${ms.toFixed(0).padStart(5)} ms / 100k  (${((ms * 1000) / N).toFixed(2)} µs each)`);
}

const user = toUserMessage(row);
const record = userToProto(row);
for (let round = 0; round < 3; round++) {
  time('row → public User', () => toUserMessage(row));
  time('row → UserRecord', () => userToProto(row));
  time('UserRecord → row', () => userFromProto(record));
  time('User → REST JSON', () => toRestUser(user));
}
