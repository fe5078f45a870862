# Walkthrough part sourced by scripts/demo.sh (sql/rcli/say come from there).

say "Sync a table: every committed change of users reaches Redis"
sql "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, email text, plan text DEFAULT 'free')"
sql "INSERT INTO users (id, name, email) VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', 'grace@example.com')"
sql "SELECT redis.sync_table('users')"
sql "SELECT redis.wait_synced()"
rcli GET users:1

say "Updates, key changes and deletes arrive in commit order; a rollback sends nothing"
sql "UPDATE users SET plan = 'pro' WHERE id = 1"
sql "BEGIN; DELETE FROM users; ROLLBACK"
sql "UPDATE users SET id = 20 WHERE id = 2"
sql "SELECT redis.wait_synced()"
rcli MGET users:1 users:2 users:20

say "Every change is also a Debezium-shaped event on a stream"
rcli XREVRANGE demo.public.users + - COUNT 1

say "Redis reads through to PostgreSQL on a miss (the module), and caches the row"
sql "CREATE TABLE products (sku text PRIMARY KEY, title text, price numeric)"
sql "INSERT INTO products VALUES ('A-1', 'Teapot', 19.90), ('B-2', 'Cup', 4.50)"
sql "SELECT redis.sync_table('products', backfill => false, ttl => 3600)"
sql "SELECT redis.wait_synced()"
sleep 0.2
rcli EXISTS products:A-1
rcli PG.GET products:A-1
rcli TTL products:A-1
rcli PG.GET products:Z-9

say "Redis commands from SQL, and commands that run only if the transaction commits"
sql "SELECT redis.incrby('visits:today', 5)"
sql "BEGIN; SELECT redis.on_commit('PUBLISH', 'news', 'price change'); UPDATE products SET price = 17.50 WHERE sku = 'A-1'; COMMIT"
sql "SELECT redis.wait_synced()"
rcli PG.GET products:A-1

say "What is synced, and how delivery is doing"
sql "SELECT table_name, key_template, format, ttl, stream_key FROM redis.tables"
sql "SELECT table_name, queued, delivered, lag, worker_state FROM redis.status"
rcli PG.STATS
