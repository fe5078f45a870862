-- What redis.tables and redis.status show for synced tables (their stable columns: no times,
-- pids, oids or worker state), and the notices sync_table gives.
\set VERBOSITY default
\set SHOW_CONTEXT never
\set ON_ERROR_ROLLBACK on
SET client_min_messages = notice;
BEGIN;
CREATE SCHEMA billing;
CREATE TABLE users (id int PRIMARY KEY, name text, email text);
CREATE TABLE billing.invoices (id bigint PRIMARY KEY, user_id int NOT NULL, total numeric);
CREATE UNLOGGED TABLE sessions (token text PRIMARY KEY, user_id int);
CREATE TABLE order_items (order_id int, item_no int, qty int, PRIMARY KEY (order_id, item_no));
INSERT INTO users VALUES (1, 'ann', 'ann@example.com'), (2, 'bob', NULL);
SELECT redis.sync_table('users');
SELECT redis.sync_table('billing.invoices', format => 'hash', ttl => 3600, columns => ARRAY['total'], stream => false);
SELECT redis.sync_table('sessions', key => 'session:{{token}}', channel => 'sessions', backfill => false);
SELECT redis.sync_table('order_items', backfill => false);
-- A second call updates the mapping.
SELECT redis.sync_table('users', key => 'user:{id}', backfill => false);
SELECT table_name, key_template, format, ttl, columns, stream_key = current_database() || '.' || schema_name || '.' || rel_name AS default_stream,
       stream_key IS NULL AS no_stream, channel, schema_name, rel_name, key_columns, key_types
  FROM redis.tables ORDER BY table_name::text;
INSERT INTO order_items VALUES (1, 1, 5), (1, 2, 1);
UPDATE users SET name = 'Ann' WHERE id = 1;
INSERT INTO sessions VALUES ('abc', 1);
DELETE FROM sessions;
SELECT table_name, queued, delivered FROM redis.status ORDER BY table_name::text NULLS LAST;
SELECT o.op, m.rel_name, o.old_row, o.new_row
  FROM redis.outbox o JOIN redis.mapping m ON m.id = o.mapping_id
 ORDER BY o.id;
-- Renames: the view follows the table and a renamed key column.
ALTER TABLE order_items RENAME TO line_items;
ALTER TABLE line_items RENAME COLUMN item_no TO line_no;
SELECT table_name, key_template, key_columns, rel_name FROM redis.tables WHERE rel_name = 'line_items';
-- Dropped: the table leaves the view.
SELECT redis.unsync_table('sessions');
DROP TABLE billing.invoices;
SELECT table_name FROM redis.tables ORDER BY table_name::text;
ROLLBACK;
