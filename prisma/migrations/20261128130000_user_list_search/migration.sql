-- Listing users (GET /api/v1/users, ListUsers): the sorts and the search of issue 10.
--
-- The sorts walk an index (forwards or backwards) and stop after the page; `id` breaks ties so
-- pages are stable. Users who never logged in count as the least recent: first in `lastLoginAt`,
-- last in `-lastLoginAt`, which is what NULLS FIRST gives in one index for both directions.
CREATE INDEX "users_created_at_id_idx" ON "users"("created_at", "id");
CREATE INDEX "users_last_login_at_id_idx" ON "users"("last_login_at" NULLS FIRST, "id");

-- `q` matches users whose username, e-mail, first or last name starts with it, ignoring case
-- (src/repositories/user-repository.ts). text_pattern_ops lets `LIKE 'prefix%'` use a B-tree
-- whatever the database's collation. Prisma's schema language cannot state indexes on
-- expressions, so these live here only; its diff leaves expression indexes alone.
CREATE INDEX "users_username_prefix_idx" ON "users"(lower("username") text_pattern_ops);
CREATE INDEX "users_email_prefix_idx" ON "users"(lower("email") text_pattern_ops);
CREATE INDEX "users_first_name_prefix_idx" ON "users"(lower("first_name") text_pattern_ops);
CREATE INDEX "users_last_name_prefix_idx" ON "users"(lower("last_name") text_pattern_ops);
