-- The text of redis.on_commit's refusals: for everyone, then under the command policy for a
-- role that is not a superuser.
\set VERBOSITY default
\set SHOW_CONTEXT never
\set ON_ERROR_ROLLBACK on
SET client_min_messages = notice;
BEGIN;
SELECT redis.on_commit('SET', NULL, 'v');
SELECT redis.on_commit(VARIADIC ARRAY[]::text[]);
SELECT redis.on_commit('MULTI');
SELECT redis.on_commit('subscribe', 'news');
SELECT redis.on_commit('XREAD', 'BLOCK', '0', 'STREAMS', 's', '$');
-- Accepted: queued as a command.
SELECT redis.on_commit('DEL', 'report:today');
SELECT op, command FROM redis.outbox WHERE op = 'x' ORDER BY id;
CREATE TABLE orders (id int PRIMARY KEY);
SELECT redis.sync_table('orders', backfill => false);
CREATE ROLE regress_app;
GRANT USAGE ON SCHEMA redis TO regress_app;
GRANT EXECUTE ON FUNCTION redis.on_commit TO regress_app;
SET LOCAL pg_redis.sql_command_policy = 'restricted';
SET LOCAL ROLE regress_app;
SELECT redis.on_commit('FLUSHALL');
SELECT redis.on_commit('SET', 'orders:1', 'v');
SELECT redis.on_commit('DEL', 'pg_redis:mappings:x');
SELECT redis.on_commit('NOSUCHCOMMAND');
SELECT redis.on_commit('SET', 'free:1', 'v');
SET pg_redis.sql_command_policy = 'unrestricted';
RESET ROLE;
SET LOCAL pg_redis.sql_command_policy = 'read_only';
SET LOCAL ROLE regress_app;
SELECT redis.on_commit('SET', 'free:1', 'v');
SELECT redis.on_commit('PUBLISH', 'news', 'hi');
SELECT redis.on_commit('GET', 'free:1');
RESET ROLE;
ROLLBACK;
