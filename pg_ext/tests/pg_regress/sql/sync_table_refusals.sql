-- The text of redis.sync_table's refusals (and unsync_table's, resync's), with their hints.
\set VERBOSITY default
\set SHOW_CONTEXT never
\set ON_ERROR_ROLLBACK on
SET client_min_messages = notice;
BEGIN;
CREATE TABLE no_pk (id int NOT NULL, v text);
SELECT redis.sync_table('no_pk');
CREATE TABLE items (id int PRIMARY KEY, v text, w text NOT NULL, code text UNIQUE);
-- Key templates.
SELECT redis.sync_table('items', key => 'items:{nope}');
SELECT redis.sync_table('items', key => '{id}');
SELECT redis.sync_table('items', key => 'items:');
SELECT redis.sync_table('items', key => 'items:{id}{w}');
SELECT redis.sync_table('items', key => 'items:{id}}');
SELECT redis.sync_table('items', key => 'items:{id');
SELECT redis.sync_table('items', key => 'items:{id}:{id}');
SELECT redis.sync_table('items', key => 'items:{}');
SELECT redis.sync_table('items', key => 'items:{{id}}:{{w}}');
SELECT redis.sync_table('items', key => 'pg_redis:{id}');
-- Key columns that cannot identify a row.
SELECT redis.sync_table('items', key => 'items:{w}');
SELECT redis.sync_table('items', key => 'items:{code}');
-- Options.
SELECT redis.sync_table('items', format => 'xml');
SELECT redis.sync_table('items', ttl => 0);
SELECT redis.sync_table('items', columns => '{}');
SELECT redis.sync_table('items', columns => ARRAY['v', 'gone']);
SELECT redis.sync_table('items', channel => '');
-- Relations that are not tables.
CREATE VIEW items_view AS SELECT * FROM items;
SELECT redis.sync_table('items_view');
CREATE MATERIALIZED VIEW items_matview AS SELECT * FROM items;
SELECT redis.sync_table('items_matview');
CREATE SEQUENCE items_seq;
SELECT redis.sync_table('items_seq');
CREATE TEMPORARY TABLE items_temp (id int PRIMARY KEY);
-- The temporary schema's name varies: the refusal is shown with it masked.
DO $$
BEGIN
    PERFORM redis.sync_table('items_temp');
EXCEPTION WHEN wrong_object_type THEN
    RAISE NOTICE '%', regexp_replace(SQLERRM, 'pg_temp_\d+', 'pg_temp_N');
END $$;
-- Overlapping prefixes.
SELECT redis.sync_table('items', key => 'it:{id}', backfill => false);
CREATE TABLE items2 (id int PRIMARY KEY);
SELECT redis.sync_table('items2', key => 'it:x:{id}');
-- Someone else's table.
CREATE ROLE regress_not_owner;
GRANT USAGE ON SCHEMA redis TO regress_not_owner;
GRANT EXECUTE ON FUNCTION redis.sync_table TO regress_not_owner;
SET LOCAL ROLE regress_not_owner;
SELECT redis.sync_table('items2');
RESET ROLE;
-- Not synced.
SELECT redis.unsync_table('items2');
SELECT redis.resync('items2');
-- A column of the key cannot be dropped, nor renamed to a name the template cannot hold.
CREATE TABLE keyed (id int PRIMARY KEY, v text);
SELECT redis.sync_table('keyed', key => 'keyed:{id}', backfill => false);
ALTER TABLE keyed DROP COLUMN id;
ALTER TABLE keyed RENAME COLUMN id TO "i}d";
ROLLBACK;
-- The backfill reads in the caller's snapshot: REPEATABLE READ is refused.
BEGIN ISOLATION LEVEL REPEATABLE READ;
CREATE TABLE rr (id int PRIMARY KEY);
SELECT redis.sync_table('rr');
ROLLBACK;
