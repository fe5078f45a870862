-- Run once, when the regression database is created. The server needs
--   shared_preload_libraries = 'pg_redis' and pg_redis.url = 'redis://127.0.0.1:1'
-- (a port that refuses at once: nothing here reaches Redis), e.g.
--   cargo pgrx regress pg15 --postgresql-conf shared_preload_libraries=pg_redis \
--     --postgresql-conf pg_redis.url=redis://127.0.0.1:1
-- Every other file runs in a transaction it rolls back, so the database stays as this leaves it.
CREATE EXTENSION pg_redis;
SELECT extname, extnamespace::regnamespace AS schema FROM pg_extension WHERE extname = 'pg_redis';
