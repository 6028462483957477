-- The search `q` of the user listing (src/infrastructure/database/dialect.ts): on MySQL/MariaDB
-- a plain `column LIKE 'prefix%'` ignores case through the tables' utf8mb4_unicode_ci collation
-- and walks the column's ordinary index; e-mails already have their unique one. (PostgreSQL
-- needs lower-case expression indexes instead, see prisma/migrations/…_user_list_search.)
CREATE INDEX `users_username_prefix_idx` ON `users`(`username`);
CREATE INDEX `users_first_name_prefix_idx` ON `users`(`first_name`);
CREATE INDEX `users_last_name_prefix_idx` ON `users`(`last_name`);
