// Prisma CLI configuration. The app itself never reads this file: it builds its client from
// src/config.ts through a driver adapter. DATABASE_URL is only needed by CLI commands that connect.
import { defineConfig } from 'prisma/config';

export default defineConfig({
  schema: 'prisma/schema.prisma',
  migrations: { path: 'prisma/migrations' },
  datasource: { url: process.env.DATABASE_URL ?? 'postgresql://localhost:5432/arcana' },
});
